// Active migrations of every host (polled every 500 ms, with live charts) and the history.
import { actions } from '../../src/api/actions.js';
import { TERMINAL, type MigrationRecord } from '../../src/migration/schemas.js';
import { call, eachHost } from './client.js';
import { addSample } from './samples.js';
import { useSession } from './session.js';
import { usePoll } from './usePoll.js';
import { ErrorMessage } from './ErrorMessage.js';
import { HistoryTable } from './HistoryTable.js';
import { MigrationView } from './MigrationView.js';

export function MigrationsPage() {
  const { hosts } = useSession();
  const active = usePoll(
    async (signal) => {
      const res = await eachHost(hosts, (h) =>
        call(h.name, actions.migrationList, { query: { all: 'false' } }, { signal }),
      );
      for (const r of res) for (const rec of r.data ?? []) addSample(rec);
      return res;
    },
    500,
    [hosts],
  );
  const history = usePoll(
    (signal) => eachHost(hosts, (h) => call(h.name, actions.migrationList, { query: { all: 'true' } }, { signal })),
    3000,
    [hosts],
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
