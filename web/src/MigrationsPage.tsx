// Active migrations of every host (each event's record applied as it comes, with live
// charts) and the history (loaded again when a migration ends).
import { actions } from '../../src/api/actions.js';
import { TERMINAL, type MigrationRecord } from '../../src/migration/schemas.js';
import { call, eachHost } from './client.js';
import { addSample } from './samples.js';
import { useSession } from './session.js';
import { useLive } from './useLive.js';
import { isMigrationEvent } from '../../src/api/events.js';
import { endsMigration, upsertRecord } from './liveRules.js';
import { ErrorMessage } from './ErrorMessage.js';
import { HistoryTable } from './HistoryTable.js';
import { MigrationView } from './MigrationView.js';

export function MigrationsPage() {
  const { hosts } = useSession();
  const names = hosts.map((h) => h.name);
  const active = useLive(
    async (signal) => {
      const res = await eachHost(hosts, (h) =>
        call(h.name, actions.migrationList, { query: { all: 'false' } }, { signal }),
      );
      for (const r of res) for (const rec of r.data ?? []) addSample(rec);
      return res;
    },
    names.join(),
    names,
    (host, e) => {
      if (e === 'connection') return 'reload';
      if (!isMigrationEvent(e)) return null;
      addSample(e.migration);
      return (data) => data.map((r) => (r.host.name === host ? { ...r, data: upsertRecord(r.data, e.migration) } : r));
    },
  );
  const history = useLive(
    (signal) => eachHost(hosts, (h) => call(h.name, actions.migrationList, { query: { all: 'true' } }, { signal })),
    names.join(),
    names,
    (_h, e) => (e === 'connection' || endsMigration(e) ? 'reload' : null),
  );

  const running: Array<{ host: string; record: MigrationRecord }> = (active.data ?? [])
    .flatMap((r) => (r.data ?? []).map((record) => ({ host: r.host.name, record })))
    .filter((x) => !TERMINAL.includes(x.record.state))
    .sort((a, b) => a.record.createdAt.localeCompare(b.record.createdAt));
  const past = (history.data ?? []).flatMap((r) => r.data ?? []).sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  const errors = (active.data ?? []).filter((r) => r.error);

  return (
    <section>
      <h2>Active migrations</h2>
      {errors.map((r) => (
        <div key={r.host.name} className="warning">
          Host {r.host.name}: <ErrorMessage error={r.error} />
        </div>
      ))}
      {active.data && running.length === 0 && (
        <p className="muted" data-testid="migrations-empty">
          No migration is running or queued.
        </p>
      )}
      <div className="stack" data-testid="migrations-active">
        {running.map((x) => (
          <MigrationView key={x.record.id} record={x.record} host={x.host} onChange={() => active.refresh()} />
        ))}
      </div>
      <h2>History</h2>
      <HistoryTable records={past} />
    </section>
  );
}
