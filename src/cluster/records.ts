// The cluster's shared records, read and written through keys.ts: nodes (members, up, paused)
// and the HA records of clustered VMs. Used by the leader (HA, drains), by every node (its own
// VMs' records) and by the agent's cluster view.
import type { ClusterStore, StoreCallOptions } from './store.js';
import * as K from './keys.js';
import { HaSpec, type ClusterNodes, type HaRecord } from './model.js';
import { FerryError, InvalidInputError } from '../errors.js';
import { decision } from './context.js';
import { withAway } from './failback.js';

export async function readNodes(
  store: ClusterStore,
  onBad: K.OnBad,
  opts: StoreCallOptions = {},
): Promise<ClusterNodes> {
  const [m, n, p, l] = await Promise.all([
    K.readAll(store, K.members, onBad, opts),
    K.readAll(store, K.nodes, onBad, opts),
    K.readAll(store, K.paused, onBad, opts),
    K.readAll(store, K.leaders, onBad, opts),
  ]);
  const members: ClusterNodes['members'] = {};
  for (const [name, e] of m) members[name] = e.value;
  const up: ClusterNodes['up'] = {};
  for (const [name, e] of n) up[name] = e.value;
  return { members, up, paused: new Set(p.keys()), leaders: new Set(l.keys()) };
}

/** Is `node` a member of the cluster? */
export async function isMember(store: ClusterStore, node: string, opts: StoreCallOptions = {}): Promise<boolean> {
  return (await store.get(K.members.key(node), opts)) !== null;
}

export async function readHaRecords(
  store: ClusterStore,
  onBad: K.OnBad,
  opts: StoreCallOptions = {},
): Promise<HaRecord[]> {
  return [...(await K.readAll(store, K.vms, onBad, opts)).values()].map((e) => e.value);
}

/** The HA record of one VM (with its stored text, for compare-and-swap), or null. */
export async function readHaRecord(
  store: ClusterStore,
  vm: string,
  opts: StoreCallOptions = {},
): Promise<K.Entry<HaRecord> | null> {
  return K.readOne(store, K.vms, vm, opts);
}

/** Records (or updates) a clustered VM, keeping its fencing generation. */
export async function putHaRecord(
  store: ClusterStore,
  rec: Omit<HaRecord, 'generation' | 'spec'> & { spec: Record<string, unknown> },
  opts: StoreCallOptions & { takeFrom?: string } = {},
): Promise<void> {
  const spec = HaSpec.safeParse(rec.spec);
  if (!spec.success)
    throw new InvalidInputError(
      `Cannot record HA VM '${rec.name}' in the cluster: its spec is not valid ` +
        `(${spec.error.issues[0]?.message ?? 'no details'})`,
      { vm: rec.name },
    );
  const { takeFrom, ...call } = opts;
  const key = K.vms.key(rec.name);
  // Compare-and-swap, so a leader's write in between (an away mark set or ended, a fencing
  // generation) is read again rather than overwritten.
  for (let attempt = 0; ; attempt++) {
    const cur = await store.get(key, call);
    const d = cur === null ? null : K.vms.decode(key, cur);
    // A record that does not parse is replaced: this node runs the VM and knows its spec.
    // A node writes only a record that is its own, or that of the node it takes the VM from
    // (a move's source): a record giving the VM to a third node is a leader's decision (an HA
    // restart elsewhere), and overwriting it would leave the VM running twice.
    if (d?.ok && d.value.owner !== rec.owner && d.value.owner !== takeFrom)
      throw new FerryError(
        'E_HA_OWNED_ELSEWHERE',
        `Cannot record HA VM '${rec.name}' as running on host '${rec.owner}': the cluster gives it to ` +
          `host '${d.value.owner}' (generation ${String(d.value.generation)}); it must not run here too`,
        { context: { vm: rec.name, owner: d.value.owner, generation: d.value.generation } },
      );
    const generation = d?.ok ? d.value.generation : 0;
    // Still away from its home unless it now runs there (fail-back, or an administrator's move).
    const away = d?.ok && d.value.away !== rec.owner ? d.value.away : undefined;
    const value = K.vms.encode(withAway({ ...rec, spec: spec.data, generation }, away));
    const done = await decision(rec.owner, `record HA VM '${rec.name}' in the cluster`, () =>
      store.txn(
        {
          compare: [cur === null ? { key, version: 0 } : { key, value: cur }],
          success: [{ type: 'put', key, value }],
        },
        call,
      ),
    );
    if (done) return;
    if (attempt >= 4)
      throw new FerryError(
        'E_CLUSTER_BUSY',
        `Cannot record HA VM '${rec.name}' in the cluster: its record kept changing; try again`,
        { context: { vm: rec.name } },
      );
  }
}

/** The VM is no longer clustered (stopped on purpose, removed, or left the cluster). */
export async function deleteHaRecord(store: ClusterStore, vm: string, opts: StoreCallOptions = {}): Promise<void> {
  await store.delete(K.vms.key(vm), opts);
}

/**
 * Replaces an HA record only if it is still `cur` (its stored text) and, when `leaderKey` is
 * given, only while that election key still holds `candidateId`. True when it was written.
 */
export async function swapHaRecord(
  store: ClusterStore,
  cur: K.Entry<HaRecord>,
  next: HaRecord,
  fence?: { key: string; value: string },
  opts: StoreCallOptions = {},
): Promise<boolean> {
  return store.txn(
    {
      compare: [...(fence ? [fence] : []), { key: cur.key, value: cur.raw }],
      success: [{ type: 'put', key: cur.key, value: K.vms.encode(next) }],
    },
    opts,
  );
}
