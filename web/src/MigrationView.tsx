// One migration record: phase, progress, ETA, verdict, queue position, live chart, per-disk
// progress, each step's time on both hosts, log, and Cancel (the agent decides whether it may;
// its refusal is shown as is).
import { useState } from 'react';
import { actions } from '../../src/api/actions.js';
import { TERMINAL, type MigrationRecord } from '../../src/migration/schemas.js';
import { describeOutcome } from '../../src/migration/prediction-outcome.js';
import { call } from './client.js';
import { bytes, ms, percent, rate, seconds, time } from './format.js';
import { samplesFor } from './samples.js';
import { ErrorMessage } from './ErrorMessage.js';
import { MigrationChart } from './MigrationChart.js';
import { useCan } from './session.js';

export function MigrationView({
  record: r,
  host,
  onChange,
}: {
  record: MigrationRecord;
  host: string;
  onChange?: (r: MigrationRecord) => void;
}) {
  const [cancelError, setCancelError] = useState<unknown>(null);
  const [cancelling, setCancelling] = useState(false);
  const done = TERMINAL.includes(r.state);
  const can = useCan();
  // The prediction the move carried (compare-vm --predict, the wizard), against what it did.
  const outcome = r.prediction ? describeOutcome(r.prediction, r) : null;

  const cancel = async (): Promise<void> => {
    setCancelling(true);
    setCancelError(null);
    try {
      onChange?.(await call(host, actions.migrationCancel, { params: { id: r.id } }));
    } catch (err) {
      setCancelError(err);
    } finally {
      setCancelling(false);
    }
  };

  return (
    <article className="card migration" data-testid={`migration-${r.id}`} data-state={r.state}>
      <header className="card-head">
        <h3>
          {r.vm}{' '}
          <span className="muted">
            {r.kind === 'storage' ? `storage on ${r.source}` : `${r.source} → ${r.destination}`}
          </span>
        </h3>
        <span className={`badge state-${r.state}`} data-testid="migration-state">
          {r.state}
        </span>
      </header>
      <div
        className="progress"
        data-testid="migration-progress"
        data-value={r.progress}
        role="progressbar"
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={Math.floor(r.progress * 100)}
      >
        <div className="bar" style={{ width: percent(r.progress) }} />
        <span className="label">{percent(r.progress)}</span>
      </div>
      <dl className="facts inline">
        <dt>Kind</dt>
        <dd>{r.kind}</dd>
        {r.state === 'queued' && (
          <>
            <dt>Queue position</dt>
            <dd data-testid="migration-queue-position">{r.queuePosition ?? '–'}</dd>
          </>
        )}
        <dt>ETA</dt>
        <dd data-testid="migration-eta">{done ? '–' : seconds(r.etaSeconds)}</dd>
        <dt>Verdict</dt>
        <dd data-testid="migration-verdict">{r.verdict ?? '–'}</dd>
        <dt>Transfer</dt>
        <dd data-testid="migration-rate">{rate(r.rate.transferBps)}</dd>
        <dt>Dirty</dt>
        <dd data-testid="migration-dirty">{rate(r.rate.dirtyBps)}</dd>
        <dt>Remaining</dt>
        <dd data-testid="migration-remaining">{bytes(r.remainingBytes)}</dd>
        <dt>Transferred</dt>
        <dd>
          {bytes(r.bytesTransferred)} in {r.passes} pass{r.passes === 1 ? '' : 'es'}
        </dd>
        <dt>Downtime limit</dt>
        <dd>{ms(r.downtimeLimitMs)}</dd>
        <dt>Throttle</dt>
        <dd>{r.throttlePct}%</dd>
        {r.downtimeMs !== null && (
          <>
            <dt>Downtime</dt>
            <dd data-testid="migration-downtime">
              {ms(r.downtimeMs)}
              {r.pausedBytes != null && <span className="small"> ({bytes(r.pausedBytes)} sent paused)</span>}
            </dd>
          </>
        )}
        {r.totalMs !== null && (
          <>
            <dt>Total time</dt>
            <dd data-testid="migration-total">{ms(r.totalMs)}</dd>
          </>
        )}
        {r.prediction && (
          <>
            <dt>Predicted</dt>
            <dd data-testid="migration-predicted" data-step={r.prediction.step}>
              {r.prediction.summary}
              {outcome && (
                <span className="small" data-testid="migration-prediction-outcome">
                  {' '}
                  — {outcome}
                </span>
              )}
            </dd>
          </>
        )}
        <dt>Id</dt>
        <dd className="small">{r.id}</dd>
      </dl>
      {!done && <MigrationChart samples={samplesFor(r.id)} />}
      {r.disks.length > 0 && (
        <table className="table compact" data-testid="migration-disks">
          <thead>
            <tr>
              <th>Disk</th>
              <th>From</th>
              <th>To</th>
              <th>Copied</th>
            </tr>
          </thead>
          <tbody>
            {r.disks.map((d) => (
              <tr key={d.id}>
                <td>{d.id}</td>
                <td className="path">{d.source}</td>
                <td className="path">{d.destination}</td>
                <td>
                  {bytes(d.bytesDone)} of {bytes(d.bytesTotal)}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {r.steps && r.steps.length > 0 && (
        <details className="events" data-testid="migration-steps">
          <summary>Time by step ({r.steps.length})</summary>
          <table className="table compact">
            <thead>
              <tr>
                <th>At</th>
                <th>Host</th>
                <th>Step</th>
                <th>Took</th>
              </tr>
            </thead>
            <tbody>
              {[...r.steps]
                .sort((a, b) => a.atMs - b.atMs)
                .map((s, n) => (
                  <tr key={n} data-testid={`migration-step-${s.on}-${s.name}`}>
                    <td className="muted">+{ms(s.atMs)}</td>
                    <td>{s.on === 'source' ? r.source : r.destination}</td>
                    <td>{s.name}</td>
                    <td>
                      {ms(s.ms)}
                      {s.failed ? ' (failed)' : ''}
                    </td>
                  </tr>
                ))}
            </tbody>
          </table>
        </details>
      )}
      {r.error && (
        <div className="error" role="alert" data-testid="migration-error">
          <code className="code">{r.error.code}</code> {r.error.message}
        </div>
      )}
      {r.incompatibilities.length > 0 && (
        <ul className="incompat">
          {r.incompatibilities.map((i, n) => (
            <li key={n}>
              <code>{i.code}</code> {i.message}
            </li>
          ))}
        </ul>
      )}
      {r.events.length > 0 && (
        <details className="events" data-testid="migration-events">
          <summary>Log ({r.events.length})</summary>
          <ol>
            {r.events.slice(-50).map((e, n) => (
              <li key={n}>
                <span className="muted">{time(e.at)}</span> {e.message}
              </li>
            ))}
          </ol>
        </details>
      )}
      {!done && can(actions.migrationCancel) && (
        <div className="actions">
          <button
            type="button"
            className="danger"
            onClick={() => void cancel()}
            disabled={cancelling}
            data-testid="migration-cancel"
          >
            {cancelling ? 'Cancelling…' : 'Cancel'}
          </button>
        </div>
      )}
      <ErrorMessage error={cancelError} testid="migration-cancel-error" />
    </article>
  );
}
