// Follows a drain or fail-back through the agents' event streams (issue 12 §4): the leader
// publishes each version of a batch as a `cluster.batch` event (src/cluster/batches.ts). The
// leader can change during a drain, so the streams of every host of the context are opened
// before the drain starts; the cluster is read once, and only, when events may have been missed
// (a reconnect, a reset, a stream that did not open or was lost, a batch this one does not know).
import type { AgentClient } from '../api/client.js';
import type { BatchView, ClusterView } from '../api/schemas.js';
import { FerryError, messageOf } from '../errors.js';
import { FerryEvent } from '../api/events.js';
import { openEventStream, type EventStream } from './event-stream.js';

/** What following needs: the hosts (their streams), and one read of the cluster (any member). */
export interface BatchSource {
  clients: AgentClient[];
  readCluster(): Promise<ClusterView>;
}

const isDone = (b: BatchView): boolean => b.state !== 'running';
const same = (a: BatchView, b: BatchView): boolean => a.node === b.node && a.startedAt === b.startedAt;

/** One VM's result as `cluster drain` prints it while it follows. */
export const itemLine = (i: BatchView['items'][number]): string =>
  `${i.vm}: ${i.state}${i.to ? ` → ${i.to}` : ''}${i.reason ? ` (${i.reason})` : ''}`;

/** Prints each VM's result once it is known and whenever it changes (`  VM: moved → host-b (…)`). */
export class BatchLines {
  private readonly said = new Map<string, string>();
  constructor(private readonly out: NodeJS.WritableStream = process.stderr) {}

  batch(b: BatchView): void {
    for (const i of b.items) {
      const line = itemLine(i);
      if (i.state === 'pending' || this.said.get(i.vm) === line) continue;
      this.out.write(`  ${line}\n`);
      this.said.set(i.vm, line);
    }
  }
}

export class BatchWatch {
  private readonly streams = new Map<string, EventStream>();
  /** The newest batch each node's events gave, not yet looked at by follow(). */
  private readonly latest = new Map<string, BatchView>();
  /** Hosts whose stream stayed unreachable (closed for good). */
  private readonly lost = new Map<string, FerryError>();
  private gap = false;
  private wake: () => void = () => undefined;

  private constructor(private readonly src: BatchSource) {}

  /**
   * Opens the event stream of every host and resolves once each has opened or failed: a batch
   * started after this misses no event of the hosts that opened. None opening is an error.
   */
  static async open(src: BatchSource): Promise<BatchWatch> {
    const w = new BatchWatch(src);
    const results = await Promise.all(src.clients.map((c) => w.subscribe(c)));
    const failed = results.filter((r): r is Error => r !== null);
    if (failed.length === src.clients.length) {
      w.close();
      throw new FerryError(
        'E_AGENT_UNREACHABLE',
        `Cannot follow the cluster: no host's event stream opened (${failed.map(messageOf).join('; ')}); ` +
          'check the agents, or use --no-wait',
        { context: { hosts: src.clients.map((c) => c.host) } },
      );
    }
    // A host not followed may be the leader: the first read says, and opens its stream.
    if (failed.length) w.gap = true;
    return w;
  }

  /** Opens `client`'s stream; null once it is subscribed, else why not. */
  private async subscribe(client: AgentClient): Promise<Error | null> {
    const stream = openEventStream(client, {
      wants: (raw) => raw.type === 'cluster.batch',
      check: (raw) => {
        const r = FerryEvent.safeParse(raw);
        return r.success ? r.data : null;
      },
      onEvent: (e) => {
        if (e.type !== 'cluster.batch') return;
        this.latest.set(e.batch.node, e.batch);
        this.wake();
      },
      onGap: () => {
        this.gap = true;
        this.wake();
      },
      onLost: (err) => {
        this.streams.delete(client.host);
        this.lost.set(client.host, err);
        // The others may still carry the batch (a new leader): read once, then follow them.
        this.gap = true;
        this.wake();
      },
    });
    this.streams.set(client.host, stream);
    try {
      await stream.ready;
      return null;
    } catch (err) {
      this.streams.delete(client.host);
      return err instanceof Error ? err : new Error(String(err));
    }
  }

  close(): void {
    for (const s of this.streams.values()) s.close();
    this.streams.clear();
  }

  /**
   * Follows the batch `first` (as its drain or resume returned it) to its end: `onBatch` hears
   * every newer version of it. Ends with the batch once it is no longer running.
   */
  async follow(first: BatchView, onBatch: (b: BatchView) => void): Promise<BatchView> {
    const what = `the ${first.kind} of ${first.node}`;
    const st: { current: BatchView; fromEvents: number; reading: boolean; readError: FerryError | null } = {
      current: first,
      fromEvents: 0,
      reading: false,
      readError: null,
    };
    onBatch(first);

    // One read at a time, again if another gap came meanwhile. A read that fails leaves the gap
    // to the next reconnect or event; one that an event overtook is dropped (the leader
    // publishes every version, so the event is at least as new).
    const read = (): void => {
      if (st.reading) return;
      st.reading = true;
      this.gap = false;
      const before = st.fromEvents;
      this.src
        .readCluster()
        .then(
          (v) => {
            void this.followLeader(v.leader);
            const b = v.batches.find((x) => same(x, first));
            if (!b)
              st.readError = new FerryError(
                'E_BATCH_GONE',
                `Cannot follow ${what}: another drain or fail-back replaced it; see 'ferry cluster status'`,
              );
            else if (st.fromEvents === before && !isDone(st.current)) st.current = b;
          },
          () => undefined,
        )
        .finally(() => {
          st.reading = false;
          this.wake();
        });
    };

    let shown = first;
    for (;;) {
      const e = this.latest.get(first.node);
      this.latest.delete(first.node);
      if (e && same(e, first)) {
        if (!isDone(st.current)) {
          st.current = e;
          st.fromEvents++;
        }
      } else if (e) this.gap = true; // another batch of this node: the cluster says whether ours is gone
      if (st.current !== shown) {
        shown = st.current;
        onBatch(shown);
      }
      if (isDone(st.current)) return st.current;
      if (st.readError) throw st.readError;
      if (!this.streams.size) {
        const why = [...this.lost.values()].map(messageOf).join('; ');
        throw new FerryError(
          'E_AGENT_UNREACHABLE',
          `Cannot follow ${what}: no host's event stream is left (${why}); it goes on, see 'ferry cluster status'`,
          { context: { node: first.node } },
        );
      }
      if (this.gap) read();
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = () => undefined;
    }
  }

  /** The leader publishes the batch: a leader whose stream is not open gets one (then a read). */
  private async followLeader(leader: string | null): Promise<void> {
    if (leader === null || this.streams.has(leader)) return;
    const client = this.src.clients.find((c) => c.host === leader);
    if (!client) return;
    this.lost.delete(leader);
    if ((await this.subscribe(client)) === null) {
      this.gap = true;
      this.wake();
    }
  }
}
