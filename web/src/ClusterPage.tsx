// Nodes and the migration queue of every host. In a cluster, a node's state is the
// cluster's (its lease in etcd); otherwise whether its agent answers. Drain and resume come
// with the rest of the cluster.
import { actions } from '../../src/api/actions.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { call, eachHost } from './client.js';
import { bytes } from './format.js';
import { useSession } from './session.js';
import { usePoll } from './usePoll.js';
import { ErrorMessage } from './ErrorMessage.js';

export function ClusterPage() {
  const { hosts } = useSession();
  const nodes = usePoll((signal) => eachHost(hosts, (h) => call(h.name, actions.hostShow, {}, { signal })), 3000, [hosts]);
  // Any host answers for the whole cluster (E_CLUSTER_NOT_FOUND: these hosts are not in one).
  const cluster = usePoll(async (signal) => {
    for (const h of hosts) {
      try { return await call(h.name, actions.clusterStatus, {}, { signal }); } catch { /* next host */ }
    }
    return null;
  }, 2000, [hosts]);
  const clusterState = (name: string): 'up' | 'down' | undefined => cluster.data?.nodes.find((n) => n.name === name)?.state;
  const queue = usePoll((signal) => eachHost(hosts, (h) => call(h.name, actions.migrationList, { query: { all: 'false' } }, { signal })), 1000, [hosts]);

  const queued: MigrationRecord[] = (queue.data ?? []).flatMap((r) => r.data ?? []).filter((r) => r.state === 'queued')
    .sort((a, b) => a.source.localeCompare(b.source) || (a.queuePosition ?? Infinity) - (b.queuePosition ?? Infinity));

  return (
    <section>
      <h2>Cluster</h2>
      <p className="note" data-testid="cluster-note">
        {cluster.data ? `Cluster '${cluster.data.name}': node state from the cluster's leases.` : 'These hosts are not in a cluster: a node is up when its agent answers.'}
        {' '}Drain and resume are not built yet.
      </p>
      <h3>Nodes</h3>
      <table className="table" data-testid="cluster-nodes">
        <thead><tr><th>Node</th><th>State</th><th>VMs</th><th>Free memory</th><th /></tr></thead>
        <tbody>
          {(nodes.data ?? hosts.map((host) => ({ host, data: undefined, error: undefined }))).map((n) => (
            <tr key={n.host.name} data-testid={`cluster-node-${n.host.name}`}>
              <td className="strong">{n.host.name}</td>
              <td>
                {!nodes.data ? <span className="muted">…</span>
                  : (() => {
                    const st = clusterState(n.host.name) ?? (n.data ? 'up' : 'unreachable');
                    return <span className={`badge ${st === 'up' ? 'ok' : 'bad'}`} data-testid={`cluster-node-state-${n.host.name}`}>{st}</span>;
                  })()}
                {n.error && <ErrorMessage error={n.error} />}
              </td>
              <td>{n.data?.vms ?? '–'}</td>
              <td>{n.data ? bytes(n.data.memory.freeBytes) : '–'}</td>
              <td className="actions">
                <button type="button" disabled title="needs a cluster (not built yet)" data-testid={`cluster-drain-${n.host.name}`}>Drain</button>
                <button type="button" disabled title="needs a cluster (not built yet)" data-testid={`cluster-resume-${n.host.name}`}>Resume</button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <h3>Migration queue</h3>
      {queued.length === 0 ? <p className="muted" data-testid="cluster-queue-empty">Nothing is waiting.</p> : (
        <table className="table" data-testid="cluster-queue">
          <thead><tr><th>Host</th><th>Position</th><th>VM</th><th>Kind</th><th>From → to</th><th>Priority</th></tr></thead>
          <tbody>
            {queued.map((r) => (
              <tr key={r.id} data-testid={`cluster-queue-row-${r.id}`}>
                <td>{r.source}</td><td data-testid={`cluster-queue-position-${r.id}`}>{r.queuePosition ?? '–'}</td>
                <td className="strong">{r.vm}</td><td>{r.kind}</td>
                <td>{r.kind === 'storage' ? r.source : `${r.source} → ${r.destination}`}</td><td>{r.priority}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
