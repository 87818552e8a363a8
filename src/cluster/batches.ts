// Drain and fail-back, the leader's side: it runs every batch (batches/<node>) to its end. It
// starts each move on the VM's current host (which queues it in the cluster queue), follows
// it, retries moves that failed for a passing reason, and records each VM's result. Every
// write compares the batch's stored text and the leader's election key, so a new leader takes
// over where the old one stopped, and resume can abort a drain at any time.
import { randomUUID } from 'node:crypto';
import type { Emit } from '../api/events.js';
import { DEFAULTS } from '../api/defaults.js';
import { actions } from '../api/actions.js';
import { FerryError, messageOf } from '../errors.js';
import type { MigrationRecord } from '../migration/schemas.js';
import type { Leadership } from './store.js';
import * as K from './keys.js';
import { mayLead, policyOf, type Batch, type BatchItem, type ClusterNodes } from './model.js';
import { place, type PlacementNode } from './placement.js';
import { placementNodes, withClient, type ClusterCtx } from './context.js';
import { readHaRecord, readNodes } from './records.js';
import { coalesced } from '../util/coalesce.js';
import type { AdaptiveConcurrency } from './adaptive.js';

/** Adaptive concurrency on the leader: the model the scheduler reads, and how to tell it the levels changed. */
export interface Adaptive {
  model: AdaptiveConcurrency;
  changed: () => void;
}

const MAX_ATTEMPTS = 3;
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

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

function codeOf(err: unknown): string | undefined {
  return err instanceof FerryError ? err.code : undefined;
}

/**
 * What a refused or failed start of `it`'s move (attempt `it.attempts`) does to the item: moved
 * (the VM left already), pending again (a retry, or not an attempt: its host is rejoining the
 * cluster after an agent restart, its fence keeping the node up), or failed.
 */
export function startFailed(it: BatchItem, err: unknown): void {
  const code = codeOf(err);
  if (code === 'E_VM_NOT_FOUND') {
    it.state = 'moved';
    it.reason = `not on ${it.from} any more`;
    return;
  }
  it.migrationId = null;
  if (code === 'E_CLUSTER_JOINING') {
    it.attempts--;
    it.state = 'pending';
    it.reason = `waiting for ${it.from} to rejoin the cluster: ${messageOf(err)}`;
    return;
  }
  const ctx = err instanceof FerryError ? err.context : {};
  const incompat = (ctx as { incompatibilities?: Array<{ code: string }> }).incompatibilities;
  const retry = it.attempts < MAX_ATTEMPTS && passing(code, incompat);
  it.state = retry ? 'pending' : 'failed';
  it.reason = `${retry ? `attempt ${it.attempts} failed, retrying: ` : ''}${messageOf(err)}`;
  if (retry && code === 'E_INCOMPATIBLE') it.to = null; // placed again
}

export class BatchRunner {
  private stopWatch: (() => Promise<void>) | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** The stored text of each batch as last published (key → raw). */
  private readonly announced = new Map<string, string>();

  constructor(
    private ctx: ClusterCtx,
    private leadership: Leadership,
    private onEvent: Emit,
    private adaptive?: Adaptive,
  ) {}

  async start(): Promise<void> {
    this.stopWatch = await this.ctx.store.watchPrefix(K.batches.prefix, () => void this.pass());
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
      const all = await K.readAll(this.ctx.store, K.batches, this.ctx.onBad);
      this.announce([...all.values()]);
      for (const e of all.values()) {
        const b = e.value;
        if (b.state === 'running' || b.items.some((i) => i.state === 'moving')) await this.step(e.key, e.raw, b);
      }
    } catch (err) {
      this.onEvent('cluster.batch-error', { message: messageOf(err) });
    }
  });

  /**
   * Publishes each batch version not yet published by this leader: followers (`ferry cluster
   * drain`, the web console) render the events instead of reading the cluster again and again.
   * Every write to batches/ wakes a pass through the watch, so each change is published.
   */
  private announce(entries: Array<{ key: string; raw: string; value: Batch }>): void {
    for (const key of this.announced.keys()) if (!entries.some((e) => e.key === key)) this.announced.delete(key);
    for (const e of entries) {
      if (this.announced.get(e.key) === e.raw) continue;
      this.announced.set(e.key, e.raw);
      // A copy: step() changes the batch it was given, and the bus keeps the event for replays.
      this.onEvent('cluster.batch', { batch: structuredClone(e.value) });
    }
  }

  /** Writes the batch if it is still `raw` and this agent still leads; its new text, or null. */
  private async write(key: string, raw: string, b: Batch): Promise<string | null> {
    const next = K.batches.encode(b);
    if (next === raw) return raw;
    const ok = await this.ctx.store.txn({
      compare: [
        { key: this.leadership.key, value: this.leadership.candidateId },
        { key, value: raw },
      ],
      success: [{ type: 'put', key, value: next }],
    });
    return ok ? next : null;
  }

  private async step(key: string, raw: string, b: Batch): Promise<void> {
    const nodes = await readNodes(this.ctx.store, this.ctx.onBad);
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
      if (it.state !== 'pending' || b.state !== 'running') continue;
      if (b.kind === 'failback' && !nodes.up[b.node]) {
        it.state = 'failed';
        it.reason = `${b.node} is down`;
        continue;
      }
      if (!it.to || !nodes.up[it.to] || (nodes.paused.has(it.to) && b.kind === 'drain')) {
        pnodes ??= await placementNodes(this.ctx, nodes);
        const to = await this.placeAgain(it, pnodes, nodes);
        if (!to.to) {
          it.state = 'failed';
          it.reason = to.reason;
          continue;
        }
        it.to = to.to;
      }
      it.state = 'moving';
      it.migrationId = randomUUID();
      it.attempts++;
      starts.push(it);
    }
    if (b.state === 'running' && !b.items.some((i) => i.state === 'pending' || i.state === 'moving')) {
      b.state = b.items.every((i) => i.state === 'moved') ? 'completed' : 'failed';
      b.finishedAt = new Date().toISOString();
    }
    const cur = await this.write(key, raw, b);
    if (!cur) return; // changed meanwhile (resume, or another leader): the next pass reads it again
    if (!starts.length) return;
    // All at once: the cluster queue orders them by priority and holds them to the limits.
    await Promise.all(starts.map((it) => this.startMove(b, it, nodes)));
    await this.write(key, cur, b); // if it changed meanwhile, the next pass follows the moves by their ids
  }

  private async placeAgain(
    it: BatchItem,
    pnodes: PlacementNode[],
    nodes: ClusterNodes,
  ): Promise<{ to: string | null; reason: string }> {
    const rec = await readHaRecord(this.ctx.store, it.vm).catch((err: unknown) => {
      // A bad record: placed by the default policy (the leader's loops must go on).
      this.onEvent('cluster.batch-error', { message: messageOf(err) });
      return null;
    });
    const pol = policyOf(rec?.value.spec);
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
          // An HA VM (it has a record) goes only where its record may be kept.
          exclude: [it.from, ...(rec ? Object.keys(nodes.members).filter((n) => !mayLead(nodes, n)) : [])],
        },
      ],
    );
    return { to: p?.to ?? null, reason: p?.reason ?? 'no node to go to' };
  }

  /** Asks the VM's host to start the move (it queues it in the cluster queue). */
  private async startMove(b: Batch, it: BatchItem, nodes: ClusterNodes): Promise<void> {
    const from = nodes.up[it.from];
    const toName = it.to;
    const to = toName ? nodes.up[toName] : undefined;
    const id = it.migrationId;
    try {
      if (!from || !toName || !to || !id) throw new FerryError('E_NODE_DOWN', `node '${it.to ?? '?'}' went down`);
      await withClient(this.ctx, it.from, from.endpoint, (c) =>
        c.call(
          actions.migrationCreate,
          {
            body: {
              id,
              batch: `${b.kind}:${b.node}`,
              vm: it.vm,
              to: { name: toName, endpoint: to.endpoint },
              options: { includeStorage: false, retainSource: false },
              policy: { maxDowntimeMs: DEFAULTS.maxDowntimeMs, priority: it.priority, allowPostcopy: false },
            },
          },
          { timeoutMs: 120_000 },
        ),
      );
      this.onEvent('cluster.batch-move', { node: b.node, vm: it.vm, to: it.to, migration: id });
    } catch (err) {
      startFailed(it, err);
    }
  }

  /** A move in progress: read its record on the source host. */
  private async follow(b: Batch, it: BatchItem, nodes: ClusterNodes): Promise<void> {
    const from = nodes.up[it.from];
    const id = it.migrationId;
    if (!from || !id) return;
    let rec: MigrationRecord;
    try {
      rec = await withClient(this.ctx, it.from, from.endpoint, (c) =>
        c.call(actions.migrationShow, { params: { id } }, { timeoutMs: 15_000 }),
      );
    } catch (err) {
      if (codeOf(err) === 'E_MIGRATION_NOT_FOUND') {
        // Recorded as started, never reached the host (the old leader died in between).
        it.state = b.state === 'running' ? 'pending' : 'cancelled';
        it.migrationId = null;
      }
      return;
    }
    if (!TERMINAL.has(rec.state)) return;
    await this.learn(b, rec);
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

  /**
   * A live move of the batch ended: adaptive concurrency learns from it (its rate at the level
   * it ran at; a missed downtime limit or a move that could not converge). Its level changes
   * are published as events and kept in the batch of the node they concern.
   */
  private async learn(b: Batch, rec: MigrationRecord): Promise<void> {
    const a = this.adaptive;
    if (!a || (rec.kind !== 'live' && rec.kind !== 'shared-nothing') || rec.state === 'cancelled') return;
    if (rec.state === 'failed' && rec.error?.code !== 'E_NOT_CONVERGING') return; // not a sign of load
    const limits = await K.readLimits(this.ctx.store, this.ctx.onBad);
    if (!limits.adaptive) return;
    const changes = a.model.observe(
      {
        from: rec.source,
        to: rec.destination,
        bytes: rec.bytesTransferred,
        totalMs: rec.totalMs ?? 0,
        completed: rec.state === 'completed',
        downtimeMs: rec.downtimeMs,
        maxDowntimeMs: rec.policy.maxDowntimeMs,
      },
      { outgoing: limits.maxOutgoing, incoming: limits.maxIncoming },
    );
    for (const c of changes) {
      this.onEvent('cluster.concurrency', { ...c });
      const mine = c.node === b.node && c.direction === (b.kind === 'drain' ? 'outgoing' : 'incoming');
      if (mine)
        b.concurrency = [
          ...(b.concurrency ?? []),
          { at: new Date().toISOString(), node: c.node, level: c.to, reason: c.reason },
        ].slice(-64);
    }
    if (changes.length) a.changed();
  }
}
