// The cluster-wide migration queue. A source agent puts every move between two nodes of the
// cluster under queue/<id> (on its node lease, so a dead source frees its places) and waits;
// the leader's scheduler admits moves by priority within the limits, each admission an etcd
// transaction guarded by its leadership (admit/<id>); the source removes both keys when the
// move ends. Any agent reads the queue, so positions show wherever one asks.
import type { Emit } from '../api/events.js';
import { AbortedError, FerryError, messageOf } from '../errors.js';
import type { ClusterStore, Lease, Leadership } from './store.js';
import { keys, parseLimits, type QueueItem } from './model.js';
import { positions, schedule } from './schedule.js';
import { coalesced } from '../util/coalesce.js';

const admitKey = (id: string): string => `admit/${id}`;

/** Reads queue/ and admit/ into items with their state. */
export async function readQueue(store: ClusterStore): Promise<QueueItem[]> {
  return (await readQueueRaw(store)).items;
}

async function readQueueRaw(
  store: ClusterStore,
): Promise<{ items: QueueItem[]; raw: Map<string, string>; admits: Record<string, string> }> {
  const [q, admits] = await Promise.all([store.getPrefix('queue/'), store.getPrefix('admit/')]);
  const raw = new Map<string, string>();
  const items = Object.entries(q).map(([k, v]) => {
    const id = k.slice('queue/'.length);
    raw.set(id, v);
    const item = JSON.parse(v) as QueueItem;
    return { ...item, id, state: admits[admitKey(id)] ? ('admitted' as const) : ('queued' as const) };
  });
  return { items, raw, admits };
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
  ) {}

  async start(): Promise<void> {
    for (const p of ['queue/', 'admit/']) this.stops.push(await this.store.watchPrefix(p, () => void this.refresh()));
    await this.refresh();
  }

  async stop(): Promise<void> {
    for (const s of this.stops.splice(0)) await s().catch(() => undefined);
  }

  /** Re-reads the queue (bursts of watch events coalesce into one read) and wakes the waiters. */
  readonly refresh = coalesced(async () => {
    try {
      this.snapshot = await readQueue(this.store);
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
    item: Omit<QueueItem, 'state' | 'seq'>,
    opts: { signal: AbortSignal; onPosition?: (p: number | null) => void },
  ): Promise<void> {
    const lease = this.lease();
    if (!lease || lease.lost)
      throw new FerryError(
        'E_CLUSTER_UNAVAILABLE',
        `Cannot queue the move of VM '${item.vm}': node '${this.node}' does not hold its cluster lease now; wait until it rejoins (ferry cluster status) and retry`,
      );
    const value = JSON.stringify({ ...item, seq: Date.now() });
    await this.store.put(keys.queue(item.id), value, { lease, signal: opts.signal });
    let last: number | null = -1;
    try {
      for (;;) {
        if (opts.signal.aborted) throw new AbortedError('wait in the cluster queue', opts.signal.reason);
        await this.refresh();
        const mine = this.snapshot.find((i) => i.id === item.id);
        if (!mine) {
          // Gone without admission: our lease was lost (the node was cut from the cluster).
          const again = await this.store.get(keys.queue(item.id), { signal: opts.signal }).catch(() => null);
          if (!again)
            throw new FerryError(
              'E_CLUSTER_QUEUE',
              `Cannot move VM '${item.vm}': it lost its place in the cluster queue (node '${this.node}' lost its lease); retry the move`,
            );
        } else if (mine.state === 'admitted') {
          return;
        }
        const p = this.position(item.id);
        if (p !== last) {
          last = p;
          opts.onPosition?.(p);
        }
        // Woken by the watch; a slow poll covers a missed event.
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, 2000);
          function done(): void {
            clearTimeout(t);
            waker.delete(done);
            opts.signal.removeEventListener('abort', done);
            resolve();
          }
          const waker = this.wake;
          waker.add(done);
          opts.signal.addEventListener('abort', done, { once: true });
        });
      }
    } catch (err) {
      await this.leave(item.id).catch(() => undefined);
      throw err;
    }
  }

  /** The move ended (or never started): free its place. */
  async leave(id: string): Promise<void> {
    await this.store.txn({
      compare: [],
      success: [
        { type: 'delete', key: keys.queue(id) },
        { type: 'delete', key: admitKey(id) },
      ],
    });
  }
}

/** The leader's side: admits queued moves whenever the queue, the limits or the nodes change. */
export class Scheduler {
  private stops: Array<() => Promise<void>> = [];
  private timer: NodeJS.Timeout | null = null;
  /** Milliseconds the last decision took (read + decide + write), for the benchmark and metrics. */
  lastDecisionMs = 0;

  constructor(
    private store: ClusterStore,
    private leadership: Leadership,
    private onEvent: Emit,
  ) {}

  async start(): Promise<void> {
    for (const p of ['queue/', 'admit/', keys.config])
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
    const [{ items, raw, admits }, limitsRaw] = await Promise.all([
      readQueueRaw(this.store),
      this.store.get(keys.config),
    ]);
    const ids = new Set(items.map((i) => i.id));
    // Admissions of moves whose source went away (its lease took queue/<id> with it).
    for (const k of Object.keys(admits)) {
      if (!ids.has(k.slice('admit/'.length)))
        await this.store.txn({
          compare: [{ key: this.leadership.key, value: this.leadership.candidateId }],
          success: [{ type: 'delete', key: k }],
        });
    }
    const admit = schedule(items, parseLimits(limitsRaw));
    for (const id of admit) {
      const item = items.find((i) => i.id === id)!;
      const ok = await this.store.txn({
        compare: [
          { key: this.leadership.key, value: this.leadership.candidateId },
          { key: admitKey(id), version: 0 },
          { key: keys.queue(id), value: raw.get(id)! },
        ],
        success: [{ type: 'put', key: admitKey(id), value: JSON.stringify({ at: new Date().toISOString() }) }],
      });
      if (ok) this.onEvent('cluster.admitted', { migration: id, vm: item.vm, from: item.from, to: item.to });
    }
    this.lastDecisionMs = performance.now() - t0;
  }
}
