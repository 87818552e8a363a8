import type { MigrationRecord } from '../../src/migration/schemas.js';
import { bytes, ms, time } from './format.js';

export function HistoryTable({ records }: { records: readonly MigrationRecord[] }) {
  if (records.length === 0)
    return (
      <p className="muted" data-testid="history-empty">
        No migrations yet.
      </p>
    );
  return (
    <table className="table" data-testid="history-table">
      <thead>
        <tr>
          <th>Started</th>
          <th>VM</th>
          <th>Kind</th>
          <th>From → to</th>
          <th>State</th>
          <th>Downtime</th>
          <th>Total time</th>
          <th>Transferred</th>
          <th>Error</th>
        </tr>
      </thead>
      <tbody>
        {records.map((r) => (
          <tr key={r.id} data-testid={`history-row-${r.id}`} data-vm={r.vm} data-state={r.state}>
            <td className="small">{time(r.startedAt ?? r.createdAt)}</td>
            <td className="strong">{r.vm}</td>
            <td>{r.kind}</td>
            <td>{r.kind === 'storage' ? r.source : `${r.source} → ${r.destination}`}</td>
            <td>
              <span className={`badge state-${r.state}`}>{r.state}</span>
            </td>
            <td>{ms(r.downtimeMs)}</td>
            <td>{ms(r.totalMs)}</td>
            <td>{bytes(r.bytesTransferred)}</td>
            <td className="error-cell">
              {r.error ? (
                <>
                  <code>{r.error.code}</code> {r.error.message}
                </>
              ) : (
                ''
              )}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
