import { actions } from '../../src/api/actions.js';
import { call, eachHost } from './client.js';
import { useSession } from './session.js';
import { usePoll } from './usePoll.js';
import { HostCard } from './HostCard.js';

export function HostsPage() {
  const { hosts } = useSession();
  const poll = usePoll((signal) => eachHost(hosts, (h) => call(h.name, actions.hostShow, {}, { signal })), 3000, [
    hosts,
  ]);
  return (
    <section>
      <h2>Hosts</h2>
      {!poll.data && poll.loading && <p className="muted">Loading…</p>}
      <div className="cards">
        {(poll.data ?? []).map((r) => (
          <HostCard key={r.host.name} host={r.host} view={r.data} error={r.error} />
        ))}
      </div>
    </section>
  );
}
