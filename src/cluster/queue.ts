// The cluster-wide migration queue. A source agent puts every move between two nodes of the
// cluster under queue/<source>/<id> (on its node lease, so a dead source frees its places) and
// waits; the leader's scheduler admits moves by priority within the limits, each admission an
// etcd transaction guarded by its leadership (admit/<id>); the source removes its entry when
// the move ends, and the leader the admission. Any agent reads the queue, so positions show wherever one asks.
import type { Emit } from '../api/events.js';
import { AbortedError, FerryError, messageOf } from '../errors.js';
import type { ClusterStore, Lease, Leadership } from './store.js';
import * as K from './keys.js';
import type { QueueEntry, QueueItem } from './model.js';
import { positions, schedule } from './schedule.js';
import type { AdaptiveConcurrency } from './adaptive.js';
import { coalesced } from '../util/coalesce.js';

interface QueueRead {
  items: QueueItem[];
  /** Stored text and key of each entry, by id (for compare-and-swap). */
  raw: Map<string, { key: string; raw: string }>;
  /** Ids with an admission. */
  admitted: Set<string>;
}

async function readQueueRaw(store: ClusterStore, onBad: K.OnBad): Promise<QueueRead> {
  const [entries, admits] = await Promise.all([
    K.readQueueEntries(store, onBad),
    // An admission's value is only a time: its key is what counts, so a bad value is still an admission.
    store.getPrefix(K.admits.prefix),
  ]);
  const admitted = new Set<string>();
  for (const k of Object.keys(admits)) {
    const id = K.admits.nameOf(k);
    if (id === null) onBad({ key: k, issue: `not a key of the form ${K.admits.prefix}<migration>` });
    else admitted.add(id);
  }
  const raw = new Map<string, { key: string; raw: string }>();
  const items = entries.map(({ key, raw: text, entry }) => {
    raw.set(entry.id, { key, raw: text });
    return { ...entry, state: admitted.has(entry.id) ? ('admitted' as const) : ('queued' as const) };
  });
  return { items, raw, admitted };
}

/** Reads the queue (every source's entries) and the admissions into items with their state. */
export async function readQueue(store: ClusterStore, onBad: K.OnBad): Promise<QueueItem[]> {
  return (await readQueueRaw(store, onBad)).items;
}

/** The source agent's side: enter the queue, wait for admission, leave. */
export class ClusterQueue {
  private snapshot: QueueItem[] = [];
  private pos = new Map<string, number>();
  private wake = new Set<() => void>();
  private stops: Array<() => Promise<void>> = [];

  constructor(
    private store: ClusterStore,
    private node: string,
    private lease: () => Lease | null,
    private onBad: K.OnBad,
  ) {}

  async start(): Promise<void> {
    for (const p of [K.queue.prefix, K.admits.prefix, K.paused.prefix])
      this.stops.push(await this.store.watchPrefix(p, () => void this.refresh()));
    await this.refresh();
  }

  async stop(): Promise<void> {
    for (const s of this.stops.splice(0)) await s().catch(() => undefined);
  }

  /** Re-reads the queue (bursts of watch events coalesce into one read) and wakes the waiters. */
  readonly refresh = coalesced(async () => {
    try {
      this.snapshot = await readQueue(this.store, this.onBad);
      this.pos = positions(this.snapshot);
    } catch {
      /* the next event or poll retries */
    }
    for (const w of this.wake) w();
  });

  items(): QueueItem[] {
    return this.snapshot;
  }
  position(id: string): number | null {
    return this.pos.get(id) ?? null;
  }

  /**
   * Queues a move and resolves once the leader admitted it. `onPosition` hears the place in
   * line whenever it changes. Aborting the signal leaves the queue.
   */
  async enter(
    item: Omit<QueueEntry, 'seq'>,
    opts: { signal: AbortSignal; onPosition?: (p: number | null) => void },
  ): Promise<void> {
    const lease = this.lease();
    if (!lease || lease.lost)
      throw new FerryError(
        'E_CLUSTER_UNAVAILABLE',
        `Cannot queue the move of VM '${item.vm}': node '${this.node}' does not hold its cluster lease now; ` +
          'wait until it rejoins (ferry cluster status) and retry',
      );
    if (item.from !== this.node)
      throw new FerryError(
        'E_CLUSTER_QUEUE',
        `Cannot queue the move of VM '${item.vm}' from '${item.from}': only its source node queues a move`,
      );
    const key = K.queue.key(this.node, item.id);
    await this.store.put(key, K.queue.codec.encode({ ...item, seq: Date.now() }), { lease, signal: opts.signal });
    try {
      await this.waitAdmitted(item, key, opts);
    } catch (err) {
      await this.leave(item.id).catch(() => undefined);
      throw err;
    }
  }

  private async waitAdmitted(
    item: Omit<QueueEntry, 'seq'>,
    key: string,
    opts: { signal: AbortSignal; onPosition?: (p: number | null) => void },
  ): Promise<void> {
    let last: number | null = -1;
    for (;;) {
      if (opts.signal.aborted) throw new AbortedError('wait in the cluster queue', opts.signal.reason);
      await this.refresh();
      const mine = this.snapshot.find((i) => i.id === item.id);
      if (!mine) {
        // Gone without admission: our lease was lost (the node was cut from the cluster).
        const again = await this.store.get(key, { signal: opts.signal }).catch(() => null);
        if (!again)
          throw new FerryError(
            'E_CLUSTER_QUEUE',
            `Cannot move VM '${item.vm}': it lost its place in the cluster queue ` +
              `(node '${this.node}' lost its lease); retry the move`,
          );
      } else if (mine.state === 'admitted') {
        return;
      } else if (await this.isPaused(item.to, opts.signal)) {
        // The leader admits nothing into a paused node: the move is refused, not held forever.
        throw new FerryError(
          'E_NODE_PAUSED',
          `Cannot move VM '${item.vm}' to '${item.to}': that node was paused in the cluster while the move ` +
            `waited in the queue, and takes no VMs; run 'ferry cluster resume ${item.to}' and move it again, ` +
            'or choose another node',
          { context: { vm: item.vm, node: item.to } },
        );
      }
      const p = this.position(item.id);
      if (p !== last) {
        last = p;
        opts.onPosition?.(p);
      }
      // Woken by the watch; a slow poll covers a missed event.
      await new Promise<void>((resolve) => {
        const waker = this.wake;
        const t = setTimeout(done, 2000);
        function done(): void {
          clearTimeout(t);
          waker.delete(done);
          opts.signal.removeEventListener('abort', done);
          resolve();
        }
        waker.add(done);
        opts.signal.addEventListener('abort', done, { once: true });
      });
    }
  }

  private async isPaused(node: string, signal: AbortSignal): Promise<boolean> {
    // etcd not answering is not a pause: the next round asks again.
    return (await this.store.get(K.paused.key(node), { signal }).catch(() => null)) !== null;
  }

  /** The move ended (or never started): free its place (the leader then drops its admission). */
  async leave(id: string): Promise<void> {
    await this.store.delete(K.queue.key(this.node, id));
  }
}

/** The leader's side: admits queued moves whenever the queue, the limits or the nodes change. */
export class Scheduler {
  private stops: Array<() => Promise<void>> = [];
  private timer: NodeJS.Timeout | null = null;
  /** Milliseconds the last decision took (read + decide + write), for the benchmark and metrics. */
  lastDecisionMs = 0;
  private readonly onBad: K.OnBad;

  constructor(
    private store: ClusterStore,
    private leadership: Leadership,
    private onEvent: Emit,
    /** Learnt per-node levels (drains and fail-backs), below the limits when `adaptive` is on. */
    private adaptive?: AdaptiveConcurrency,
  ) {
    this.onBad = (bad) => {
      onEvent('cluster.bad-value', bad);
    };
  }

  async start(): Promise<void> {
    for (const p of [K.queue.prefix, K.admits.prefix, K.config.key, K.paused.prefix])
      this.stops.push(await this.store.watchPrefix(p, () => void this.pass()));
    // A missed watch event must not stall the queue.
    this.timer = setInterval(() => void this.pass(), 3000);
    this.timer.unref();
    await this.pass();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const s of this.stops.splice(0)) await s().catch(() => undefined);
  }

  readonly pass = coalesced(async () => {
    if (this.leadership.lost) return;
    try {
      await this.decide();
    } catch (err) {
      this.onEvent('cluster.scheduler-error', { message: messageOf(err) });
    }
  });

  private async decide(): Promise<void> {
    const t0 = performance.now();
    const [{ items, raw, admitted }, limits, paused] = await Promise.all([
      readQueueRaw(this.store, this.onBad),
      K.readLimits(this.store, this.onBad),
      K.readAll(this.store, K.paused, this.onBad),
    ]);
    const fence = { key: this.leadership.key, value: this.leadership.candidateId };
    // Admissions of moves whose source went away (its lease took queue/<source>/<id> with it).
    for (const id of admitted) {
      if (!raw.has(id))
        await this.store.txn({ compare: [fence], success: [{ type: 'delete', key: K.admits.key(id) }] });
    }
    const a = limits.adaptive ? this.adaptive : undefined;
    const per = a && {
      outgoing: (n: string, max: number) => a.limit(n, 'outgoing', max),
      incoming: (n: string, max: number) => a.limit(n, 'incoming', max),
    };
    for (const id of schedule(items, limits, new Set(paused.keys()), per)) {
      const item = items.find((i) => i.id === id);
      const entry = raw.get(id);
      if (!item || !entry) continue;
      const ok = await this.store.txn({
        compare: [fence, { key: K.admits.key(id), version: 0 }, { key: entry.key, value: entry.raw }],
        success: [{ type: 'put', key: K.admits.key(id), value: K.admits.encode({ at: new Date().toISOString() }) }],
      });
      if (ok) this.onEvent('cluster.admitted', { migration: id, vm: item.vm, from: item.from, to: item.to });
    }
    this.lastDecisionMs = performance.now() - t0;
  }
}
