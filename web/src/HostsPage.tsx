import { actions } from '../../src/api/actions.js';
import { call, eachHost } from './client.js';
import { useSession } from './session.js';
import { useLive } from './useLive.js';
import { changesHosts } from './liveRules.js';
import { HostCard } from './HostCard.js';

export function HostsPage() {
  const { hosts } = useSession();
  const names = hosts.map((h) => h.name);
  const live = useLive(
    (signal) => eachHost(hosts, (h) => call(h.name, actions.hostShow, {}, { signal })),
    names.join(),
    names,
    (_h, e) => (changesHosts(e) ? 'reload' : null),
  );
  return (
    <section>
      <h2>Hosts</h2>
      {!live.data && live.loading && <p className="muted">Loading…</p>}
      <div className="cards">
        {(live.data ?? []).map((r) => (
          <HostCard key={r.host.name} host={r.host} view={r.data} error={r.error} />
        ))}
      </div>
    </section>
  );
}
