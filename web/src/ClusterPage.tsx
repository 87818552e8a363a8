// Nodes, clustered VMs, the migration queue, drains and fail-backs. In a cluster, a node's
// state is the cluster's (its lease in etcd, paused when drained) and the queue is the
// cluster's; otherwise nodes are up when their agent answers and each host has its queue.
// Drain shows the dry-run plan first (destinations and blockers), then starts on confirm.
import { useState } from 'react';
import { actions } from '../../src/api/actions.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import type { ActionOutput } from '../../src/api/action.js';
import { call, eachHost, type HostRef } from './client.js';
import { bytes } from './format.js';
import { useCan, useSession } from './session.js';
import { useLive } from './useLive.js';
import { changesCluster } from './liveRules.js';
import { ErrorMessage } from './ErrorMessage.js';

type Cluster = ActionOutput<typeof actions.clusterStatus>;
type DrainResult = ActionOutput<typeof actions.clusterDrain>;
type ItemState = NonNullable<DrainResult['batch']>['items'][number]['state'];
/** The badge colour (a VM or migration state's) of a batch item's state. */
const ITEM_BADGE: Record<ItemState, string> = {
  pending: 'queued',
  moving: 'migrating',
  moved: 'completed',
  failed: 'failed',
  blocked: 'failed',
  cancelled: 'failed',
};

/** Any member answers for the whole cluster. */
async function anyHost<T>(hosts: readonly HostRef[], fn: (h: HostRef) => Promise<T>): Promise<T> {
  let last: unknown;
  for (const h of hosts) {
    try {
      return await fn(h);
    } catch (err) {
      last = err;
      if (
        (err as { status?: number }).status &&
        (err as { status: number }).status < 500 &&
        (err as { code?: string }).code !== 'E_CLUSTER_UNAVAILABLE'
      )
        throw err;
    }
  }
  throw last;
}

export function ClusterPage() {
  const { hosts } = useSession();
  const can = useCan();
  const names = hosts.map((h) => h.name);
  const key = names.join();
  const reload = (_h: string, e: Parameters<typeof changesCluster>[0]) => (changesCluster(e) ? 'reload' : null);
  const nodes = useLive(
    (signal) => eachHost(hosts, (h) => call(h.name, actions.hostShow, {}, { signal })),
    key,
    names,
    reload,
  );
  const cluster = useLive(
    async (signal): Promise<Cluster | null> => {
      for (const h of hosts) {
        try {
          return await call(h.name, actions.clusterStatus, {}, { signal });
        } catch {
          /* next host (or not a cluster) */
        }
      }
      return null;
    },
    key,
    names,
    reload,
  );
  const queue = useLive(
    (signal) => eachHost(hosts, (h) => call(h.name, actions.migrationList, { query: { all: 'false' } }, { signal })),
    key,
    names,
    reload,
  );
  const [plan, setPlan] = useState<DrainResult['plan'] | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const c = cluster.data ?? null;

  const act = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
    setBusy(what);
    setError(null);
    try {
      await fn();
      cluster.refresh();
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(null);
    }
  };
  const dryRun = (node: string) =>
    act(`plan-${node}`, async () => {
      setPlan(
        (
          await anyHost(hosts, (h) =>
            call(h.name, actions.clusterDrain, { params: { name: node }, body: { dryRun: true } }),
          )
        ).plan,
      );
    });
  const drain = (node: string) =>
    act(`drain-${node}`, async () => {
      await anyHost(hosts, (h) =>
        call(h.name, actions.clusterDrain, { params: { name: node }, body: { dryRun: false } }),
      );
      setPlan(null);
    });
  const resume = (node: string, failback: boolean) =>
    act(`resume-${node}`, () =>
      anyHost(hosts, (h) => call(h.name, actions.clusterResume, { params: { name: node }, body: { failback } })),
    );

  const perHostQueued: MigrationRecord[] = (queue.data ?? [])
    .flatMap((r) => r.data ?? [])
    .filter((r) => r.state === 'queued')
    .sort((a, b) => a.source.localeCompare(b.source) || (a.queuePosition ?? Infinity) - (b.queuePosition ?? Infinity));

  return (
    <section>
      <h2>Cluster</h2>
      <p className="note" data-testid="cluster-note">
        {c
          ? `Cluster '${c.name}' · leader ${c.leader ?? '(electing)'} · limits ${c.limits.maxOutgoing} out / ` +
            `${c.limits.maxIncoming} in per node, ${c.limits.maxTotal} in the cluster. ` +
            "Node state comes from the cluster's leases."
          : 'These hosts are not in a cluster: a node is up when its agent answers; drain and resume need a cluster.'}
      </p>
      {error && <ErrorMessage error={error} />}
      <h3>Nodes</h3>
      <table className="table" data-testid="cluster-nodes">
        <thead>
          <tr>
            <th>Node</th>
            <th>State</th>
            <th>VMs</th>
            <th>Free memory</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {(nodes.data ?? hosts.map((host) => ({ host, data: undefined, error: undefined }))).map((n) => {
            const name = n.host.name;
            const st =
              c?.nodes.find((x) => x.name === name)?.state ??
              (nodes.data ? (n.data ? 'up' : 'unreachable') : undefined);
            const running = c?.batches.find((b) => b.node === name && b.state === 'running');
            return (
              <tr key={name} data-testid={`cluster-node-${name}`}>
                <td className="strong">{name}</td>
                <td>
                  {!st ? (
                    <span className="muted">…</span>
                  ) : (
                    <span
                      className={`badge ${st === 'up' ? 'ok' : st === 'paused' ? 'state-paused' : 'bad'}`}
                      data-testid={`cluster-node-state-${name}`}
                    >
                      {st}
                    </span>
                  )}
                  {running && (
                    <span className="badge state-migrating" data-testid={`cluster-node-batch-${name}`}>
                      {' '}
                      {running.kind}ing
                    </span>
                  )}
                  {n.error && <ErrorMessage error={n.error} />}
                </td>
                <td data-testid={`cluster-node-vms-${name}`}>{n.data?.vms ?? '–'}</td>
                <td>{n.data ? bytes(n.data.memory.freeBytes) : '–'}</td>
                <td className="actions">
                  {can(actions.clusterDrain) && (
                    <button
                      type="button"
                      disabled={!c || st !== 'up' || !!busy}
                      title={c ? 'Plan a drain: where each VM would go' : 'needs a cluster'}
                      onClick={() => void dryRun(name)}
                      data-testid={`cluster-drain-${name}`}
                    >
                      Drain…
                    </button>
                  )}
                  {can(actions.clusterResume) && (
                    <>
                      <button
                        type="button"
                        disabled={!c || st !== 'paused' || !!busy}
                        title="Take VMs again (stops a running drain's queued moves)"
                        onClick={() => void resume(name, false)}
                        data-testid={`cluster-resume-${name}`}
                      >
                        Resume
                      </button>
                      <button
                        type="button"
                        disabled={!c || st !== 'paused' || !!busy}
                        title="Resume and move its VMs back"
                        onClick={() => void resume(name, true)}
                        data-testid={`cluster-failback-${name}`}
                      >
                        Resume + fail back
                      </button>
                    </>
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>

      {plan && (
        <div className="panel" data-testid="drain-plan">
          <h3>Drain plan for {plan.node}</h3>
          <p>
            {plan.movable} VM(s) can move, {plan.blocked} blocked. The node is paused (no VM lands on it) and the moves
            go through the cluster queue by priority.
          </p>
          <table className="table">
            <thead>
              <tr>
                <th>VM</th>
                <th>State</th>
                <th>Memory</th>
                <th>Priority</th>
                <th>Goes to</th>
                <th>Blockers / warnings</th>
              </tr>
            </thead>
            <tbody>
              {plan.items.map((i) => (
                <tr key={i.vm} data-testid={`drain-plan-${i.vm}`}>
                  <td className="strong">{i.vm}</td>
                  <td>{i.state}</td>
                  <td>{i.memoryMiB} MiB</td>
                  <td>{i.priority}</td>
                  <td data-testid={`drain-plan-to-${i.vm}`}>{i.to ?? <span className="badge bad">blocked</span>}</td>
                  <td>{[...i.blockers.map((b) => `${b.code}: ${b.message}`), ...i.warnings].join(' · ') || '–'}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <div className="actions">
            <button
              type="button"
              className="primary"
              disabled={!!busy}
              onClick={() => void drain(plan.node)}
              data-testid="drain-confirm"
            >
              Drain {plan.node}
            </button>
            <button type="button" onClick={() => setPlan(null)} data-testid="drain-cancel">
              Close
            </button>
          </div>
        </div>
      )}

      {c && c.vms.length > 0 && (
        <>
          <h3>Clustered VMs</h3>
          <table className="table" data-testid="cluster-vms">
            <thead>
              <tr>
                <th>VM</th>
                <th>Owner</th>
                <th>Priority</th>
                <th>Preferred owners</th>
                <th>Anti-affinity</th>
              </tr>
            </thead>
            <tbody>
              {c.vms.map((v) => (
                <tr key={v.name}>
                  <td className="strong">{v.name}</td>
                  <td>{v.owner}</td>
                  <td>{v.priority}</td>
                  <td>{v.preferredOwners.join(', ') || '–'}</td>
                  <td>{v.antiAffinity.join(', ') || '–'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}

      <h3>Migration queue</h3>
      {c ? (
        c.queue.length === 0 ? (
          <p className="muted" data-testid="cluster-queue-empty">
            Nothing is waiting or moving.
          </p>
        ) : (
          <table className="table" data-testid="cluster-queue">
            <thead>
              <tr>
                <th>Position</th>
                <th>VM</th>
                <th>From → to</th>
                <th>Priority</th>
                <th>State</th>
                <th>For</th>
              </tr>
            </thead>
            <tbody>
              {c.queue.map((q) => (
                <tr key={q.id} data-testid={`cluster-queue-row-${q.id}`}>
                  <td data-testid={`cluster-queue-position-${q.id}`}>{q.position ?? '–'}</td>
                  <td className="strong">{q.vm}</td>
                  <td>
                    {q.from} → {q.to}
                  </td>
                  <td>{q.priority}</td>
                  <td>
                    <span className={`badge state-${q.state === 'admitted' ? 'migrating' : 'queued'}`}>
                      {q.state === 'admitted' ? 'moving' : 'queued'}
                    </span>
                  </td>
                  <td>{q.batch ?? '–'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )
      ) : perHostQueued.length === 0 ? (
        <p className="muted" data-testid="cluster-queue-empty">
          Nothing is waiting.
        </p>
      ) : (
        <table className="table" data-testid="cluster-queue">
          <thead>
            <tr>
              <th>Host</th>
              <th>Position</th>
              <th>VM</th>
              <th>Kind</th>
              <th>From → to</th>
              <th>Priority</th>
            </tr>
          </thead>
          <tbody>
            {perHostQueued.map((r) => (
              <tr key={r.id} data-testid={`cluster-queue-row-${r.id}`}>
                <td>{r.source}</td>
                <td data-testid={`cluster-queue-position-${r.id}`}>{r.queuePosition ?? '–'}</td>
                <td className="strong">{r.vm}</td>
                <td>{r.kind}</td>
                <td>{r.kind === 'storage' ? r.source : `${r.source} → ${r.destination}`}</td>
                <td>{r.priority}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      {c &&
        c.batches.map((b) => (
          <div key={`${b.node}-${b.startedAt}`} data-testid={`cluster-batch-${b.node}`}>
            <h3>
              {b.kind === 'drain' ? 'Drain' : 'Fail-back'} of {b.node}:{' '}
              <span
                className={`badge state-${b.state === 'running' ? 'migrating' : b.state}`}
                data-testid={`cluster-batch-state-${b.node}`}
              >
                {b.state}
              </span>
            </h3>
            <table className="table">
              <thead>
                <tr>
                  <th>VM</th>
                  <th>From → to</th>
                  <th>Priority</th>
                  <th>Result</th>
                  <th>Detail</th>
                </tr>
              </thead>
              <tbody>
                {b.items.map((i) => (
                  <tr key={i.vm} data-testid={`cluster-batch-item-${b.node}-${i.vm}`}>
                    <td className="strong">{i.vm}</td>
                    <td>
                      {i.from} → {i.to ?? '–'}
                    </td>
                    <td>{i.priority}</td>
                    <td>
                      <span className={`badge state-${ITEM_BADGE[i.state]}`}>{i.state}</span>
                    </td>
                    <td>{i.reason ?? ''}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ))}
    </section>
  );
}
