// Drain and fail-back. Any agent plans a drain (placement + a compatibility check of every
// VM against every candidate node) and records it as a batch under batches/<node>; the
// leader runs batches: it starts each move on the VM's current host (which queues it in the
// cluster queue), follows it to the end, retries moves that failed for a passing reason, and
// records each VM's result. A batch is only ever changed by transactions that compare its
// value, so a new leader takes over where the old one stopped, and resume can abort it.
import type { Emit } from '../api/events.js';
import { DEFAULTS } from '../api/defaults.js';
import { randomUUID } from 'node:crypto';
import { AgentClient } from '../api/client.js';
import { actions } from '../api/actions.js';
import { FerryError, NotFoundError, messageOf } from '../errors.js';
import type { VmView } from '../api/schemas.js';
import type { MigrationRecord } from '../migration/schemas.js';
import type { ClusterStore, Leadership } from './store.js';
import {
  DEFAULT_POLICY,
  keys,
  type Batch,
  type BatchItem,
  type ClusterPolicy,
  type NodeRecord,
  type Priority,
} from './model.js';
import { place, type PlacedVm, type PlacementNode } from './placement.js';
import { coalesced } from '../util/coalesce.js';
import type { HaRecord } from './ha.js';

export interface ClusterCtx {
  store: ClusterStore;
  self: string;
  tls: { ca: string; cert: string; key: string };
}

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

export interface ClusterNodes {
  members: Record<string, { endpoint: string }>;
  up: Record<string, NodeRecord>;
  paused: Set<string>;
}

export async function readNodes(store: ClusterStore, opts: { signal?: AbortSignal } = {}): Promise<ClusterNodes> {
  const [m, n, p] = await Promise.all([
    store.getPrefix('members/', opts),
    store.getPrefix('nodes/', opts),
    store.getPrefix('paused/', opts),
  ]);
  const members: ClusterNodes['members'] = {};
  for (const [k, v] of Object.entries(m)) members[k.slice('members/'.length)] = JSON.parse(v) as { endpoint: string };
  const up: ClusterNodes['up'] = {};
  for (const [k, v] of Object.entries(n)) up[k.slice('nodes/'.length)] = JSON.parse(v) as NodeRecord;
  return { members, up, paused: new Set(Object.keys(p).map((k) => k.slice('paused/'.length))) };
}

export async function readHaRecords(store: ClusterStore, opts: { signal?: AbortSignal } = {}): Promise<HaRecord[]> {
  return Object.values(await store.getPrefix('vms/', opts)).map((v) => JSON.parse(v) as HaRecord);
}

export function policyOf(
  spec: { cluster?: Partial<ClusterPolicy> } | Record<string, unknown> | undefined,
): ClusterPolicy {
  const c = (spec as { cluster?: Partial<ClusterPolicy> } | undefined)?.cluster;
  return { ...DEFAULT_POLICY, ...(c ?? {}) };
}

export function clientFor(ctx: ClusterCtx, name: string, endpoint: string): AgentClient {
  return new AgentClient({ endpoint, host: name, credentials: ctx.tls });
}

async function withClient<T>(
  ctx: ClusterCtx,
  name: string,
  endpoint: string,
  fn: (c: AgentClient) => Promise<T>,
): Promise<T> {
  const c = clientFor(ctx, name, endpoint);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/** Nodes as placement sees them: up, paused, free memory (asked of each up node). */
export async function placementNodes(
  ctx: ClusterCtx,
  nodes: ClusterNodes,
  opts: { signal?: AbortSignal } = {},
): Promise<PlacementNode[]> {
  return Promise.all(
    Object.keys(nodes.members)
      .sort()
      .map(async (name) => {
        const up = nodes.up[name];
        if (!up) return { name, up: false, paused: nodes.paused.has(name), freeMiB: 0 };
        const freeMiB = await withClient(ctx, name, up.endpoint, (c) =>
          c.call(actions.hostShow, {}, { timeoutMs: 15_000, ...(opts.signal ? { signal: opts.signal } : {}) }),
        ).then(
          (h) => Math.floor(h.memory.freeBytes / 1048576),
          () => -1,
        );
        // A node that does not answer is not a place to go.
        return { name, up: freeMiB >= 0, paused: nodes.paused.has(name), freeMiB: Math.max(0, freeMiB) };
      }),
  );
}

function existingPlacements(records: HaRecord[], without: Set<string>): PlacedVm[] {
  return records
    .filter((r) => !without.has(r.name))
    .map((r) => ({ vm: r.name, node: r.owner, antiAffinity: policyOf(r.spec).antiAffinity }));
}

/** What a drain of `node` would do: every VM's destination or the reasons it cannot move. */
export async function planDrain(
  ctx: ClusterCtx,
  node: string,
  opts: { signal?: AbortSignal } = {},
): Promise<DrainPlan> {
  const nodes = await readNodes(ctx.store, opts);
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
      `Cannot drain node '${node}': it is down; its HA VMs restart on the other nodes by themselves, and the rest wait until it is back`,
      { context: { node } },
    );
  const sig = opts.signal ? { signal: opts.signal } : {};
  const [vms, records, pnodes] = await Promise.all([
    withClient(ctx, node, src.endpoint, (c) => c.call(actions.vmList, {}, { timeoutMs: 30_000, ...sig })),
    readHaRecords(ctx.store, opts),
    placementNodes(ctx, nodes, opts),
  ]);
  const candidates = pnodes.filter((n) => n.name !== node && n.up && !n.paused);
  const byName = new Map(records.map((r) => [r.name, r]));
  // Compatibility of every VM with every candidate, asked of the node that runs it.
  const blockersOf = new Map<string, Map<string, Array<{ code: string; message: string }>>>();
  for (const vm of vms) blockersOf.set(vm.name, new Map());
  const pairs = vms.flatMap((vm) => candidates.map((n) => ({ vm, n })));
  await withClient(ctx, node, src.endpoint, async (c) => {
    // A few at a time: each compare asks the candidate for its VMs, CPU models and pools.
    const next = async (): Promise<void> => {
      for (let p = pairs.shift(); p; p = pairs.shift()) {
        const { vm, n } = p;
        const rep = await c
          .call(
            actions.compare,
            {
              body: {
                vm: vm.name,
                to: { name: n.name, endpoint: nodes.up[n.name]!.endpoint },
                options: { includeStorage: false, retainSource: false },
              },
            },
            { timeoutMs: 60_000, ...sig },
          )
          .catch((err: unknown) => ({
            compatible: false,
            incompatibilities: [
              { code: (err as FerryError).code ?? 'E_COMPARE_FAILED', field: 'destination', message: messageOf(err) },
            ],
          }));
        blockersOf.get(vm.name)!.set(
          n.name,
          rep.incompatibilities.map((i) => ({ code: i.code, message: i.message })),
        );
      }
    };
    await Promise.all([next(), next(), next(), next()]);
  });
  const toPlace = vms.map((vm) => {
    const pol = policyOf(byName.get(vm.name)?.spec);
    const bad = [...blockersOf.get(vm.name)!].filter(([, b]) => b.length).map(([n]) => n);
    return {
      name: vm.name,
      memoryMiB: vm.state === 'stopped' ? 0 : vm.memoryMiB,
      priority: pol.priority,
      preferredOwners: pol.preferredOwners,
      antiAffinity: pol.antiAffinity,
      exclude: [node, ...bad],
    };
  });
  const placed = place(pnodes, existingPlacements(records, new Set(vms.map((v) => v.name))), toPlace);
  const items: DrainPlanItem[] = placed.map((p) => {
    const vm = vms.find((v) => v.name === p.vm)!;
    const per = blockersOf.get(vm.name)!;
    const blockers: DrainPlanItem['blockers'] = [];
    if (!p.to) {
      // Say why every candidate was refused; when none had a compatibility problem, the placement's reason.
      // One line per problem: the first node's wording, naming the other nodes that said the same.
      const byCode = new Map<string, { message: string; nodes: string[] }>();
      for (const [n, bs] of per) {
        for (const b of bs) {
          const cur = byCode.get(b.code);
          if (!cur) byCode.set(b.code, { message: b.message, nodes: [n] });
          else if (!cur.nodes.includes(n)) cur.nodes.push(n);
        }
      }
      for (const [code, b] of byCode)
        blockers.push({
          code,
          message: b.nodes.length > 1 ? `${b.message} (also for ${b.nodes.slice(1).join(', ')})` : b.message,
        });
      if (!blockers.length)
        blockers.push({
          code: p.reason?.startsWith('needs') ? 'E_NO_FIT' : 'E_NO_NODE',
          message: `Cannot move VM '${vm.name}' off '${node}': ${p.reason}`,
        });
    }
    return {
      vm: vm.name,
      state: vm.state,
      memoryMiB: vm.memoryMiB,
      priority: toPlace.find((t) => t.name === vm.name)!.priority,
      clustered: vm.ha,
      to: p.to,
      kind: p.to ? (vm.state === 'stopped' ? 'offline' : 'live') : null,
      blockers,
      warnings: p.warnings,
    };
  });
  return { node, items, movable: items.filter((i) => i.to).length, blocked: items.filter((i) => !i.to).length };
}

/** Records a drain: the node is paused and the leader will run the batch. */
export async function startDrain(ctx: ClusterCtx, plan: DrainPlan): Promise<Batch> {
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
  const cur = await ctx.store.get(keys.batch(plan.node));
  if (cur && (JSON.parse(cur) as Batch).state === 'running') {
    throw new FerryError(
      'E_DRAIN_RUNNING',
      `Cannot drain node '${plan.node}': a ${(JSON.parse(cur) as Batch).kind} of it is running; wait for it ('ferry cluster status') or stop it with 'ferry cluster resume ${plan.node}'`,
      {},
    );
  }
  const ok = await ctx.store.txn({
    compare: [cur ? { key: keys.batch(plan.node), value: cur } : { key: keys.batch(plan.node), version: 0 }],
    success: [
      { type: 'put', key: keys.paused(plan.node), value: JSON.stringify({ reason: 'drain', at: batch.startedAt }) },
      { type: 'put', key: keys.batch(plan.node), value: JSON.stringify(batch) },
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
  const nodes = await readNodes(ctx.store, opts);
  if (!nodes.members[node])
    throw new NotFoundError(
      'E_NODE_NOT_FOUND',
      `Cannot resume node '${node}': it is not a member of the cluster; 'ferry cluster status' lists the nodes`,
      { node },
    );
  // First the decision, atomically: the drain is aborted and the node takes VMs again. The
  // leader stops starting moves of an aborted batch; only then are queued moves cancelled.
  let batch: Batch | null = null;
  let aborted = false;
  for (let attempt = 0; ; attempt++) {
    if (attempt === 5)
      throw new FerryError(
        'E_CLUSTER_BUSY',
        `Cannot resume node '${node}': its drain kept changing while we tried; try again`,
        {},
      );
    const raw = await ctx.store.get(keys.batch(node), opts);
    batch = raw ? (JSON.parse(raw) as Batch) : null;
    aborted = batch?.state === 'running' && batch.kind === 'drain';
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
      compare: [raw ? { key: keys.batch(node), value: raw } : { key: keys.batch(node), version: 0 }],
      success: [
        { type: 'delete', key: keys.paused(node) },
        ...(batch && aborted ? [{ type: 'put' as const, key: keys.batch(node), value: JSON.stringify(batch) }] : []),
      ],
    });
    if (ok) break;
  }
  if (batch && aborted) {
    const cancelled = new Set<string>();
    for (const it of batch.items) {
      if (it.state !== 'moving' || !it.migrationId) continue;
      const from = nodes.up[it.from];
      if (!from) continue;
      const rec = await withClient(ctx, it.from, from.endpoint, (c) =>
        c.call(actions.migrationShow, { params: { id: it.migrationId! } }, { timeoutMs: 15_000 }),
      ).catch(() => null);
      if (rec?.state !== 'queued') continue;
      const after = await withClient(ctx, it.from, from.endpoint, (c) =>
        c.call(actions.migrationCancel, { params: { id: it.migrationId! } }, { timeoutMs: 60_000 }),
      ).catch(() => null);
      if (after?.state === 'cancelled') cancelled.add(it.migrationId);
    }
    // Record them now (the leader would also see them cancelled when it follows them).
    for (let attempt = 0; attempt < 5 && cancelled.size; attempt++) {
      const raw = await ctx.store.get(keys.batch(node), opts);
      if (!raw) break;
      const cur = JSON.parse(raw) as Batch;
      for (const it of cur.items) {
        if (it.migrationId && cancelled.has(it.migrationId) && it.state === 'moving') {
          it.state = 'cancelled';
          it.reason = `drain stopped by 'ferry cluster resume ${node}' while queued`;
        }
      }
      if (
        await ctx.store.txn({
          compare: [{ key: keys.batch(node), value: raw }],
          success: [{ type: 'put', key: keys.batch(node), value: JSON.stringify(cur) }],
        })
      ) {
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
  const nodes = await readNodes(ctx.store, opts);
  if (!nodes.up[node])
    throw new FerryError('E_NODE_DOWN', `Cannot fail back to node '${node}': it is down; start it first`, {});
  const records = await readHaRecords(ctx.store, opts);
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
  const cur = await ctx.store.get(keys.batch(node));
  const ok = await ctx.store.txn({
    compare: [cur ? { key: keys.batch(node), value: cur } : { key: keys.batch(node), version: 0 }],
    success: [{ type: 'put', key: keys.batch(node), value: JSON.stringify(batch) }],
  });
  if (!ok)
    throw new FerryError(
      'E_CLUSTER_BUSY',
      `Cannot fail back to node '${node}': its batch changed meanwhile; try again`,
      {},
    );
  return batch;
}

const MAX_ATTEMPTS = 3;

/**
 * Worth another attempt: anything but a real incompatibility. A compare that failed only
 * because the destination did not answer (its agent restarting) or was paused is passing;
 * the move is then placed again.
 */
function passing(code: string | undefined, incompatibilities: Array<{ code: string }> | undefined): boolean {
  if (code !== 'E_INCOMPATIBLE') return true;
  return (
    !!incompatibilities?.length &&
    incompatibilities.every((i) => i.code === 'E_DEST_UNREACHABLE' || i.code === 'E_NODE_PAUSED')
  );
}
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** The leader's side: runs every batch to its end. */
export class BatchRunner {
  private stopWatch: (() => Promise<void>) | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private ctx: ClusterCtx,
    private leadership: Leadership,
    private onEvent: Emit,
  ) {}

  async start(): Promise<void> {
    this.stopWatch = await this.ctx.store.watchPrefix('batches/', () => void this.pass());
    this.timer = setInterval(() => void this.pass(), 1000);
    this.timer.unref();
    void this.pass();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.stopWatch?.().catch(() => undefined);
  }

  readonly pass = coalesced(async () => {
    if (this.leadership.lost) return;
    try {
      for (const [k, raw] of Object.entries(await this.ctx.store.getPrefix('batches/'))) {
        const b = JSON.parse(raw) as Batch;
        if (b.state === 'running' || b.items.some((i) => i.state === 'moving')) await this.step(k, raw, b);
      }
    } catch (err) {
      this.onEvent('cluster.batch-error', { message: messageOf(err) });
    }
  });

  private fence(key: string, raw: string): Array<{ key: string; value: string }> {
    return [
      { key: this.leadership.key, value: this.leadership.candidateId },
      { key, value: raw },
    ];
  }

  private async write(key: string, raw: string, b: Batch): Promise<string | null> {
    const next = JSON.stringify(b);
    if (next === raw) return raw;
    const ok = await this.ctx.store.txn({
      compare: this.fence(key, raw),
      success: [{ type: 'put', key, value: next }],
    });
    return ok ? next : null;
  }

  private async step(key: string, raw: string, b: Batch): Promise<void> {
    const nodes = await readNodes(this.ctx.store);
    const starts: BatchItem[] = [];
    let pnodes: PlacementNode[] | null = null;
    for (const it of b.items) {
      if ((it.state === 'moving' || it.state === 'pending') && !nodes.up[it.from]) {
        // Its host died (lease expired): nothing will move from there; HA restarts its clustered VMs.
        it.state = 'failed';
        it.reason = `${it.from} went down during the ${b.kind}; its clustered VMs restart on other nodes (HA)`;
        continue;
      }
      if (it.state === 'moving') await this.follow(b, it, nodes);
      if (it.state === 'pending' && b.state === 'running') {
        if (b.kind === 'failback' && !nodes.up[b.node]) {
          it.state = 'failed';
          it.reason = `${b.node} is down`;
          continue;
        }
        if (!it.to || !nodes.up[it.to] || (nodes.paused.has(it.to) && b.kind === 'drain')) {
          pnodes ??= await placementNodes(this.ctx, nodes);
          const rec = (await readHaRecords(this.ctx.store)).find((r) => r.name === it.vm);
          const pol = policyOf(rec?.spec);
          const [p] = place(
            pnodes,
            [],
            [
              {
                name: it.vm,
                memoryMiB: 0,
                priority: it.priority,
                preferredOwners: pol.preferredOwners,
                antiAffinity: [],
                exclude: [it.from],
              },
            ],
          );
          if (!p?.to) {
            it.state = 'failed';
            it.reason = p?.reason ?? 'no node to go to';
            continue;
          }
          it.to = p.to;
        }
        it.state = 'moving';
        it.migrationId = randomUUID();
        it.attempts++;
        starts.push(it);
      }
    }
    if (b.state === 'running' && !b.items.some((i) => i.state === 'pending' || i.state === 'moving')) {
      b.state = b.items.every((i) => i.state === 'moved') ? 'completed' : 'failed';
      b.finishedAt = new Date().toISOString();
      this.onEvent('cluster.batch', { node: b.node, kind: b.kind, state: b.state });
    }
    const cur = await this.write(key, raw, b);
    if (!cur) return; // changed meanwhile (resume, or another leader): the next pass reads it again
    if (!starts.length) return;
    // All at once: the cluster queue orders them by priority and holds them to the limits.
    await Promise.all(
      starts.map(async (it) => {
        const from = nodes.up[it.from]!;
        const to = nodes.up[it.to!];
        try {
          if (!to) throw new FerryError('E_NODE_DOWN', `node '${it.to}' went down`);
          await withClient(this.ctx, it.from, from.endpoint, (c) =>
            c.call(
              actions.migrationCreate,
              {
                body: {
                  id: it.migrationId!,
                  batch: `${b.kind}:${b.node}`,
                  vm: it.vm,
                  to: { name: it.to!, endpoint: to.endpoint },
                  options: { includeStorage: false, retainSource: false },
                  policy: { maxDowntimeMs: DEFAULTS.maxDowntimeMs, priority: it.priority, allowPostcopy: false },
                },
              },
              { timeoutMs: 120_000 },
            ),
          );
          this.onEvent('cluster.batch-move', { node: b.node, vm: it.vm, to: it.to, migration: it.migrationId });
        } catch (err) {
          const code = (err as FerryError).code;
          if (code === 'E_VM_NOT_FOUND') {
            it.state = 'moved';
            it.reason = `not on ${it.from} any more`;
            return;
          }
          const incompat = ((err as FerryError).context as { incompatibilities?: Array<{ code: string }> } | undefined)
            ?.incompatibilities;
          const retry = it.attempts < MAX_ATTEMPTS && passing(code, incompat);
          it.state = retry ? 'pending' : 'failed';
          it.reason = `${retry ? `attempt ${it.attempts} failed, retrying: ` : ''}${messageOf(err)}`;
          it.migrationId = null;
          if (retry && code === 'E_INCOMPATIBLE') it.to = null; // placed again
        }
      }),
    );
    await this.write(key, cur, b); // if it changed meanwhile, the next pass follows the moves by their ids
  }

  /** A move in progress: read its record on the source host. */
  private async follow(b: Batch, it: BatchItem, nodes: ClusterNodes): Promise<void> {
    const from = nodes.up[it.from];
    if (!from) return;
    let rec: MigrationRecord;
    try {
      rec = await withClient(this.ctx, it.from, from.endpoint, (c) =>
        c.call(actions.migrationShow, { params: { id: it.migrationId! } }, { timeoutMs: 15_000 }),
      );
    } catch (err) {
      if ((err as FerryError).code === 'E_MIGRATION_NOT_FOUND') {
        // Recorded as started, never reached the host (the old leader died in between).
        it.state = b.state === 'running' ? 'pending' : 'cancelled';
        it.migrationId = null;
      }
      return;
    }
    if (!TERMINAL.has(rec.state)) return;
    if (rec.state === 'completed') {
      it.state = 'moved';
      it.reason = rec.downtimeMs !== null ? `downtime ${rec.downtimeMs} ms` : null;
      return;
    }
    if (rec.state === 'cancelled') {
      it.state = 'cancelled';
      it.reason = rec.error?.message ?? 'cancelled';
      return;
    }
    const retry =
      it.attempts < MAX_ATTEMPTS && b.state === 'running' && passing(rec.error?.code, rec.incompatibilities);
    it.state = retry ? 'pending' : 'failed';
    it.reason = `${retry ? `attempt ${it.attempts} failed, retrying: ` : ''}${rec.error?.message ?? 'failed'}`;
    if (retry && (!nodes.up[it.to ?? ''] || rec.error?.code === 'E_INCOMPATIBLE')) it.to = null;
  }
}
