// Drain and fail-back, the requests' side. Any agent plans a drain (placement + a compatibility
// check of every VM against every candidate node) and records it as a batch under
// batches/<node>; the leader runs it (batches.ts). A batch is only ever changed by transactions
// that compare its stored text, so a new leader takes over where the old one stopped, and
// resume can abort it.
import { FerryError, NotFoundError, messageOf } from '../errors.js';
import { actions } from '../api/actions.js';
import type { VmView } from '../api/schemas.js';
import type { Compare } from './store.js';
import * as K from './keys.js';
import { mayLead, policyOf, type Batch, type HaRecord, type Priority } from './model.js';
import { place, type PlacedVm } from './placement.js';
import { decision, placementNodes, withClient, type ClusterCtx } from './context.js';
import { readHaRecords, readNodes } from './records.js';

export type { ClusterCtx } from './context.js';

export interface DrainPlanItem {
  vm: string;
  state: VmView['state'];
  memoryMiB: number;
  priority: Priority;
  clustered: boolean;
  to: string | null;
  kind: 'live' | 'offline' | null;
  blockers: Array<{ code: string; message: string }>;
  warnings: string[];
}
export interface DrainPlan {
  node: string;
  items: DrainPlanItem[];
  movable: number;
  blocked: number;
}

type Blocker = DrainPlanItem['blockers'][number];

function existingPlacements(records: HaRecord[], without: Set<string>): PlacedVm[] {
  return records
    .filter((r) => !without.has(r.name))
    .map((r) => ({ vm: r.name, node: r.owner, antiAffinity: policyOf(r.spec).antiAffinity }));
}

/** The compare that holds while batches/<node> is still what was read (`raw`, or absent). */
function unchanged(node: string, raw: string | null): Compare {
  return raw === null ? { key: K.batches.key(node), version: 0 } : { key: K.batches.key(node), value: raw };
}

/** The batch of `node` as stored, or null; a value that does not parse is reported and counts as none. */
async function readBatch(
  ctx: ClusterCtx,
  node: string,
  opts: { signal?: AbortSignal } = {},
): Promise<{ raw: string | null; batch: Batch | null }> {
  const key = K.batches.key(node);
  const raw = await ctx.store.get(key, opts);
  if (raw === null) return { raw, batch: null };
  const d = K.batches.decode(key, raw);
  if (d.ok) return { raw, batch: d.value };
  ctx.onBad(d.bad);
  return { raw, batch: null };
}

/** Every candidate's compatibility problems for every VM, asked of the node that runs the VMs. */
async function compatibility(
  ctx: ClusterCtx,
  src: { name: string; endpoint: string },
  vms: VmView[],
  candidates: Array<{ name: string; endpoint: string }>,
  signal: AbortSignal | undefined,
): Promise<Map<string, Map<string, Blocker[]>>> {
  const blockersOf = new Map<string, Map<string, Blocker[]>>(vms.map((vm) => [vm.name, new Map()]));
  const pairs = vms.flatMap((vm) => candidates.map((n) => ({ vm, n })));
  const sig = signal ? { signal } : {};
  await withClient(ctx, src.name, src.endpoint, async (c) => {
    // A few at a time: each compare asks the candidate for its VMs, CPU models and pools.
    const next = async (): Promise<void> => {
      for (let p = pairs.shift(); p; p = pairs.shift()) {
        const { vm, n } = p;
        const rep = await c
          .call(
            actions.compare,
            {
              body: { vm: vm.name, to: n, options: { includeStorage: false, retainSource: false } },
            },
            { timeoutMs: 60_000, ...sig },
          )
          .catch((err: unknown) => ({
            compatible: false,
            incompatibilities: [
              {
                code: (err as Partial<FerryError>).code ?? 'E_COMPARE_FAILED',
                field: 'destination',
                message: messageOf(err),
              },
            ],
          }));
        blockersOf.get(vm.name)?.set(
          n.name,
          rep.incompatibilities.map((i) => ({ code: i.code, message: i.message })),
        );
      }
    };
    await Promise.all([next(), next(), next(), next()]);
  });
  return blockersOf;
}

/** Why a VM cannot go anywhere: every candidate's problems (one line per problem), else the placement's reason. */
function blockersFor(vm: string, node: string, per: ReadonlyMap<string, Blocker[]>, reason: string | null): Blocker[] {
  const byCode = new Map<string, { message: string; nodes: string[] }>();
  for (const [n, bs] of per) {
    for (const b of bs) {
      const cur = byCode.get(b.code);
      if (!cur) byCode.set(b.code, { message: b.message, nodes: [n] });
      else if (!cur.nodes.includes(n)) cur.nodes.push(n);
    }
  }
  const out = [...byCode].map(([code, b]) => ({
    code,
    message: b.nodes.length > 1 ? `${b.message} (also for ${b.nodes.slice(1).join(', ')})` : b.message,
  }));
  if (!out.length)
    out.push({
      code: reason?.startsWith('needs') ? 'E_NO_FIT' : 'E_NO_NODE',
      message: `Cannot move VM '${vm}' off '${node}': ${reason ?? 'no node to go to'}`,
    });
  return out;
}

/** What a drain of `node` would do: every VM's destination or the reasons it cannot move. */
export async function planDrain(
  ctx: ClusterCtx,
  node: string,
  opts: { signal?: AbortSignal } = {},
): Promise<DrainPlan> {
  const nodes = await readNodes(ctx.store, ctx.onBad, opts);
  if (!nodes.members[node])
    throw new NotFoundError(
      'E_NODE_NOT_FOUND',
      `Cannot drain node '${node}': it is not a member of the cluster; 'ferry cluster status' lists the nodes`,
      { node },
    );
  const src = nodes.up[node];
  if (!src)
    throw new FerryError(
      'E_NODE_DOWN',
      `Cannot drain node '${node}': it is down; ` +
        'its HA VMs restart on the other nodes by themselves, and the rest wait until it is back',
      { context: { node } },
    );
  const sig = opts.signal ? { signal: opts.signal } : {};
  const [vms, records, pnodes] = await Promise.all([
    withClient(ctx, node, src.endpoint, (c) => c.call(actions.vmList, {}, { timeoutMs: 30_000, ...sig })),
    readHaRecords(ctx.store, ctx.onBad, opts),
    placementNodes(ctx, nodes, opts),
  ]);
  const candidates = pnodes
    .filter((n) => n.name !== node && n.up && !n.paused)
    .flatMap((n) => {
      const up = nodes.up[n.name];
      return up ? [{ name: n.name, endpoint: up.endpoint }] : [];
    });
  const byName = new Map(records.map((r) => [r.name, r]));
  const blockersOf = await compatibility(ctx, { name: node, endpoint: src.endpoint }, vms, candidates, opts.signal);
  // An HA VM's record is a cluster decision: only a node that may lead can hold one.
  for (const vm of vms.filter((v) => v.ha))
    for (const n of candidates.filter((c) => !mayLead(nodes, c.name)))
      blockersOf.get(vm.name)?.set(n.name, [
        ...(blockersOf.get(vm.name)?.get(n.name) ?? []),
        {
          code: 'E_CLUSTER_NOT_ELIGIBLE',
          message: `node '${n.name}' may not hold HA VMs (the administrator did not let it lead)`,
        },
      ]);
  const toPlace = vms.map((vm) => {
    const bad = [...(blockersOf.get(vm.name) ?? [])].filter(([, b]) => b.length).map(([n]) => n);
    return {
      name: vm.name,
      memoryMiB: vm.state === 'stopped' ? 0 : vm.memoryMiB,
      // Where no node has room, a Smart Paging VM still goes (its RAM in a file there).
      smartPaging: vm.smartPaging,
      ...policyOf(byName.get(vm.name)?.spec),
      exclude: [node, ...bad],
    };
  });
  const placed = place(pnodes, existingPlacements(records, new Set(vms.map((v) => v.name))), toPlace);
  const items = placed.flatMap((p): DrainPlanItem[] => {
    const vm = vms.find((v) => v.name === p.vm);
    if (!vm) return [];
    return [
      {
        vm: vm.name,
        state: vm.state,
        memoryMiB: vm.memoryMiB,
        priority: policyOf(byName.get(vm.name)?.spec).priority,
        clustered: vm.ha,
        to: p.to,
        kind: p.to ? (vm.state === 'stopped' ? 'offline' : 'live') : null,
        blockers: p.to ? [] : blockersFor(vm.name, node, blockersOf.get(vm.name) ?? new Map(), p.reason),
        warnings: p.warnings,
      },
    ];
  });
  return { node, items, movable: items.filter((i) => i.to).length, blocked: items.filter((i) => !i.to).length };
}

/** Records a drain: the node is paused and the leader will run the batch. */
export async function startDrain(ctx: ClusterCtx, plan: DrainPlan): Promise<Batch> {
  return decision(ctx.self, `drain node '${plan.node}'`, () => recordDrain(ctx, plan));
}

async function recordDrain(ctx: ClusterCtx, plan: DrainPlan): Promise<Batch> {
  const batch: Batch = {
    node: plan.node,
    kind: 'drain',
    state: 'running',
    startedAt: new Date().toISOString(),
    finishedAt: null,
    items: plan.items.map((i) => ({
      vm: i.vm,
      from: plan.node,
      priority: i.priority,
      to: i.to,
      state: i.to ? 'pending' : 'blocked',
      migrationId: null,
      attempts: 0,
      reason: i.to ? null : i.blockers.map((b) => b.message).join(' | '),
    })),
  };
  if (!batch.items.some((i) => i.state === 'pending')) {
    batch.state = batch.items.length ? 'failed' : 'completed';
    batch.finishedAt = batch.startedAt;
  }
  const cur = await readBatch(ctx, plan.node);
  if (cur.batch?.state === 'running') {
    throw new FerryError(
      'E_DRAIN_RUNNING',
      `Cannot drain node '${plan.node}': a ${cur.batch.kind} of it is running; wait for it ('ferry cluster status') ` +
        `or stop it with 'ferry cluster resume ${plan.node}'`,
      {},
    );
  }
  const ok = await ctx.store.txn({
    compare: [unchanged(plan.node, cur.raw)],
    success: [
      { type: 'put', key: K.paused.key(plan.node), value: K.paused.encode({ reason: 'drain', at: batch.startedAt }) },
      { type: 'put', key: K.batches.key(plan.node), value: K.batches.encode(batch) },
    ],
  });
  if (!ok)
    throw new FerryError(
      'E_DRAIN_RUNNING',
      `Cannot drain node '${plan.node}': another drain or fail-back of it started just now; see 'ferry cluster status'`,
      {},
    );
  return batch;
}

/** Stops a running drain in etcd (and unpauses the node), atomically; the batch as it is now. */
async function abortDrain(
  ctx: ClusterCtx,
  node: string,
  opts: { signal?: AbortSignal },
): Promise<{ batch: Batch | null; aborted: boolean }> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const { raw, batch } = await readBatch(ctx, node, opts);
    const aborted = batch?.state === 'running' && batch.kind === 'drain';
    if (batch && aborted) {
      for (const it of batch.items)
        if (it.state === 'pending') {
          it.state = 'cancelled';
          it.reason = `drain stopped by 'ferry cluster resume ${node}'`;
        }
      batch.state = 'aborted';
      batch.finishedAt = new Date().toISOString();
    }
    const ok = await ctx.store.txn({
      compare: [unchanged(node, raw)],
      success: [
        { type: 'delete', key: K.paused.key(node) },
        ...(batch && aborted
          ? [{ type: 'put' as const, key: K.batches.key(node), value: K.batches.encode(batch) }]
          : []),
      ],
    });
    if (ok) return { batch, aborted };
  }
  throw new FerryError(
    'E_CLUSTER_BUSY',
    `Cannot resume node '${node}': its drain kept changing while we tried; try again`,
    {},
  );
}

/**
 * Resume: the node takes VMs again; a running drain stops (its queued and not yet started
 * moves are cancelled, moves already copying finish). With failback, the VMs that prefer this
 * node, or that its last drain moved away, come back.
 */
export async function resumeNode(
  ctx: ClusterCtx,
  node: string,
  opts: { failback: boolean; signal?: AbortSignal },
): Promise<Batch | null> {
  return decision(ctx.self, `resume node '${node}'`, () => resume(ctx, node, opts));
}

async function resume(
  ctx: ClusterCtx,
  node: string,
  opts: { failback: boolean; signal?: AbortSignal },
): Promise<Batch | null> {
  const nodes = await readNodes(ctx.store, ctx.onBad, opts);
  if (!nodes.members[node])
    throw new NotFoundError(
      'E_NODE_NOT_FOUND',
      `Cannot resume node '${node}': it is not a member of the cluster; 'ferry cluster status' lists the nodes`,
      { node },
    );
  // First the decision, atomically: the drain is aborted and the node takes VMs again. The
  // leader stops starting moves of an aborted batch; only then are queued moves cancelled.
  const stopped = await abortDrain(ctx, node, opts);
  let batch = stopped.batch;
  if (batch && stopped.aborted) {
    const cancelled = new Set<string>();
    for (const it of batch.items) {
      const from = nodes.up[it.from];
      const id = it.migrationId;
      if (it.state !== 'moving' || !id || !from) continue;
      const rec = await withClient(ctx, it.from, from.endpoint, (c) =>
        c.call(actions.migrationShow, { params: { id } }, { timeoutMs: 15_000 }),
      ).catch(() => null);
      if (rec?.state !== 'queued') continue;
      const after = await withClient(ctx, it.from, from.endpoint, (c) =>
        c.call(actions.migrationCancel, { params: { id } }, { timeoutMs: 60_000 }),
      ).catch(() => null);
      if (after?.state === 'cancelled') cancelled.add(id);
    }
    // Record them now (the leader would also see them cancelled when it follows them).
    for (let attempt = 0; attempt < 5 && cancelled.size; attempt++) {
      const { raw, batch: cur } = await readBatch(ctx, node, opts);
      if (!raw || !cur) break;
      for (const it of cur.items) {
        if (it.migrationId && cancelled.has(it.migrationId) && it.state === 'moving') {
          it.state = 'cancelled';
          it.reason = `drain stopped by 'ferry cluster resume ${node}' while queued`;
        }
      }
      const ok = await ctx.store.txn({
        compare: [unchanged(node, raw)],
        success: [{ type: 'put', key: K.batches.key(node), value: K.batches.encode(cur) }],
      });
      if (ok) {
        batch = cur;
        break;
      }
    }
  }
  if (!opts.failback) return batch;
  return startFailback(ctx, node, batch, opts);
}

async function startFailback(
  ctx: ClusterCtx,
  node: string,
  last: Batch | null,
  opts: { signal?: AbortSignal },
): Promise<Batch> {
  const nodes = await readNodes(ctx.store, ctx.onBad, opts);
  if (!nodes.up[node])
    throw new FerryError('E_NODE_DOWN', `Cannot fail back to node '${node}': it is down; start it first`, {});
  const records = await readHaRecords(ctx.store, ctx.onBad, opts);
  const want = new Map<string, { from: string; priority: Priority }>();
  // VMs the last drain moved away, wherever they are now…
  const where = new Map<string, string>();
  for (const [name, n] of Object.entries(nodes.up)) {
    if (name === node) continue;
    const vms = await withClient(ctx, name, n.endpoint, (c) => c.call(actions.vmList, {}, { timeoutMs: 30_000 })).catch(
      () => [] as VmView[],
    );
    for (const v of vms) where.set(v.name, name);
  }
  for (const it of last?.kind === 'drain' ? last.items : []) {
    const at = where.get(it.vm);
    if (it.state === 'moved' && at) want.set(it.vm, { from: at, priority: it.priority });
  }
  // …and clustered VMs whose first preferred owner is this node.
  for (const r of records) {
    const pol = policyOf(r.spec);
    if (pol.preferredOwners[0] === node && r.owner !== node && where.get(r.name) === r.owner)
      want.set(r.name, { from: r.owner, priority: pol.priority });
  }
  const now = new Date().toISOString();
  const batch: Batch = {
    node,
    kind: 'failback',
    state: want.size ? 'running' : 'completed',
    startedAt: now,
    finishedAt: want.size ? null : now,
    items: [...want].map(([vm, w]) => ({
      vm,
      from: w.from,
      priority: w.priority,
      to: node,
      state: 'pending',
      migrationId: null,
      attempts: 0,
      reason: null,
    })),
  };
  const cur = await ctx.store.get(K.batches.key(node), opts);
  const ok = await ctx.store.txn({
    compare: [unchanged(node, cur)],
    success: [{ type: 'put', key: K.batches.key(node), value: K.batches.encode(batch) }],
  });
  if (!ok)
    throw new FerryError(
      'E_CLUSTER_BUSY',
      `Cannot fail back to node '${node}': its batch changed meanwhile; try again`,
      {},
    );
  return batch;
}
