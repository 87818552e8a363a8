import type { CompareReport, Prediction } from '../../../src/migration/schemas.js';

const LINK: Record<Prediction['linkSource'], string> = {
  history: 'learnt from recent moves there',
  bandwidth: 'the bandwidth cap',
  assumed: 'assumed: no recent move there',
};

function PredictionLine({ p }: { p: Prediction }) {
  return (
    <p data-testid="compat-prediction" data-step={p.step} data-converges={String(p.converges)}>
      Prediction: {p.summary}. The guest dirties {p.dirtyRateMiBps} MiB/s; link {p.linkMiBps} MiB/s (
      {LINK[p.linkSource]}).
    </p>
  );
}

export function CompatReport({ report }: { report: CompareReport }) {
  const n = report.incompatibilities.length;
  return (
    <div
      className={`compat ${report.compatible ? 'ok' : 'bad'}`}
      data-testid="compat-report"
      data-compatible={String(report.compatible)}
    >
      <p className="strong" data-testid="compat-status">
        {report.compatible
          ? '✔ The VM can move: no incompatibility found.'
          : `✘ The VM cannot move: ${String(n)} incompatibilit${n === 1 ? 'y' : 'ies'}.`}
      </p>
      {report.prediction && <PredictionLine p={report.prediction} />}
      {(report.warnings ?? []).map((w, n) => (
        <p key={n} className="warning" data-testid="compat-warning" data-code={w.code}>
          ⚠ {w.message}
        </p>
      ))}
      {report.incompatibilities.length > 0 && (
        <table className="table compact">
          <thead>
            <tr>
              <th>Code</th>
              <th>Field</th>
              <th>Message</th>
            </tr>
          </thead>
          <tbody>
            {report.incompatibilities.map((i, n) => (
              <tr key={n} data-testid="compat-item" data-code={i.code}>
                <td>
                  <code>{i.code}</code>
                </td>
                <td>{i.field}</td>
                <td>{i.message}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
