import type { CompareReport } from '../../../src/migration/schemas.js';

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
