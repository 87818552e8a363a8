// Who may ask this host to move one of its VMs away, and to where. An administrator may name
// any destination. A host certificate may only as the cluster's current leader (its drains
// and fail-backs), only to a member of the cluster, and the destination's endpoint is the
// one etcd records for that member: a hostile host cannot order a VM moved to itself or make
// this host talk to an endpoint it chose.
import { FerryError } from '../errors.js';
import type { PeerIdentity } from '../domain/ca.js';
import type { ClusterNode } from '../cluster/node.js';
import * as K from '../cluster/keys.js';
import { readNodes } from '../cluster/records.js';
import { mayLead } from '../cluster/model.js';
import type { Destination, MigrationRecord } from '../migration/schemas.js';

function forbidden(caller: PeerIdentity, what: string, why: string): FerryError {
  return new FerryError(
    'E_FORBIDDEN',
    `Cannot ${what}: ${why}; a host certificate may ask for a move only as the leader of this host's cluster ` +
      '(drains, fail-backs), else use an admin certificate',
    { context: { caller: caller.name } },
  );
}

/**
 * The destination to use for a move `caller` asks for: the request's for an administrator;
 * for the cluster's leader, the member of that name with its endpoint from etcd.
 * `leaderOnly` false (compare): any host, but still only toward a member at its etcd endpoint.
 */
export async function authorizedDestination(
  cluster: ClusterNode,
  caller: PeerIdentity | undefined,
  to: Destination,
  what: string,
  opts: { leaderOnly: boolean; signal?: AbortSignal },
): Promise<Destination> {
  if (!caller) throw new FerryError('E_UNAUTHENTICATED', `Cannot ${what}: no certificate`);
  if (caller.role === 'admin') return to;
  // A member still (re)joining (its agent restarted while its fence kept the node up) refuses
  // for now: the leader asks again, where a host in no cluster is refused for good.
  if (!cluster.joined && cluster.membership)
    throw new FerryError(
      'E_CLUSTER_JOINING',
      `Cannot ${what}: this host is still joining its cluster; ask again once it has joined`,
      { context: { caller: caller.name } },
    );
  if (!cluster.joined) throw forbidden(caller, what, `this host is in no cluster`);
  const ctx = cluster.context(what);
  const call = { timeoutMs: 10_000, ...(opts.signal ? { signal: opts.signal } : {}) };
  if (opts.leaderOnly) {
    const leader = await ctx.store.leader(K.election.name, call);
    if (leader !== caller.name)
      throw forbidden(caller, what, `host '${caller.name}' is not the cluster's leader (${leader ?? 'none'})`);
  }
  const nodes = await readNodes(ctx.store, ctx.onBad, call);
  const member = nodes.members[to.name];
  if (!member)
    throw forbidden(caller, what, `destination '${to.name}' is not a member of cluster '${cluster.need(what).name}'`);
  return { name: to.name, endpoint: nodes.up[to.name]?.endpoint ?? member.endpoint };
}

/**
 * May `caller` cancel `rec`, a move this host runs? An administrator may cancel any. A host only
 * a move into itself, or, as a host that may lead this host's cluster, a move a host ordered (the
 * cluster's drains and fail-backs, which `cluster resume` stops): never an administrator's move.
 */
export async function authorizeCancel(
  cluster: ClusterNode,
  caller: PeerIdentity | undefined,
  rec: Pick<MigrationRecord, 'id' | 'kind' | 'destination' | 'requestedBy'>,
  opts: { signal?: AbortSignal } = {},
): Promise<void> {
  const what = `cancel migration ${rec.id}`;
  if (!caller) throw new FerryError('E_UNAUTHENTICATED', `Cannot ${what}: no certificate`);
  if (caller.role === 'admin') return;
  if (rec.kind !== 'storage' && rec.destination === caller.name) return;
  const refuse = (why: string): FerryError =>
    new FerryError(
      'E_FORBIDDEN',
      `Cannot ${what}: ${why}; a host certificate may cancel only moves into its host and, if it may lead ` +
        'the cluster, the moves its hosts ordered; use an admin certificate',
      { context: { caller: caller.name, migration: rec.id } },
    );
  if (rec.requestedBy?.role !== 'host') throw refuse(`host '${caller.name}' does not receive it`);
  if (!cluster.joined) throw refuse(`this host is in no cluster`);
  const ctx = cluster.context(what);
  const nodes = await readNodes(ctx.store, ctx.onBad, {
    timeoutMs: 10_000,
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  if (!nodes.members[caller.name] || !mayLead(nodes, caller.name))
    throw refuse(`host '${caller.name}' may not lead cluster '${cluster.need(what).name}'`);
}
