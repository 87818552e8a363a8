// Node beats: proof that a node's own agent (or its host's fence) is alive, which a lease alone
// is not. etcd lets any authenticated client keep any lease alive by id (LeaseKeepAlive checks no
// key permission; etcd 3.4/3.5), so a hostile host could keep a dead node's lease, and with it
// its node key, alive forever. Each node therefore also rewrites its member key (members/<node>,
// which only it may write) with a new `beat` once a second, and the leader treats a node whose
// beat has not changed for the beat window (6 s) as down, as if its lease had expired. The node's
// own rule mirrors the lease's: no beat taken for the window less FENCE_MARGIN_MS and it fences
// itself (membership.ts; its host's fence process counts beats the same way), before the leader
// can count the window out. docs/performance.md § Why a VM never runs twice.

/**
 * The leader counts a node down when its beat stood still this long, the same for every node
 * whatever its own lease (the leader cannot know those). Longer than the default node lease (4 s):
 * a beat is a put, committed through etcd's Raft, and one a second; with 5 s before the node
 * fences itself, an etcd leader election (~2 s without writes) right after a beat still leaves
 * attempts. A node that simply dies is still seen down when its lease expires; the window
 * matters only when someone keeps that lease alive.
 */
export const BEAT_WINDOW_MS = 6000;
/** How often a node writes its beat: every second keepalive of a default lease (one small put per node per second). */
export const BEAT_PERIOD_MS = 1000;

/** A node that has not had a beat taken for this long fences itself: the window less the fence margin. */
export function beatLossMs(fenceMarginMs: number): number {
  return BEAT_WINDOW_MS - fenceMarginMs;
}

/**
 * The "last renewal" the node's fence acts on (fence.ts: due once `lossAfterMs` passed since it):
 * the older of the last keepalive and the last beat, the beat shifted so that it falls due after
 * its own `beatLoss` rather than the lease's margin.
 */
export function renewedAt(keptAt: number, beatAt: number, lossAfterMs: number, beatLoss: number): number {
  return Math.min(keptAt, beatAt + beatLoss - lossAfterMs);
}

/** A beat value: always larger than the last one this process wrote, and than any earlier process's. */
export function nextBeat(last: number, now: number): number {
  return Math.max(last + 1, now);
}

/**
 * The leader's view of the nodes' beats. Pure bookkeeping; the leader feeds it each read of the
 * member keys. A beat counts from when the leader first *saw* it (the answer's arrival, never
 * earlier than its write), and a node is stale only on a read *sent* a whole window after that:
 * by then the node has gone without a written beat for longer than its own fence margin, so it
 * fenced itself (or is dead). A node that never wrote a beat (an agent before beats) is judged by
 * its lease alone.
 */
export class BeatTracker {
  private readonly seen = new Map<string, { beat: number; at: number }>();

  constructor(private readonly windowMs = BEAT_WINDOW_MS) {}

  /** One read of the member keys: sent at `sentAt`, answered at `answeredAt`, each node's beat (if any). */
  observe(beats: ReadonlyMap<string, number | undefined>, sentAt: number, answeredAt: number): string[] {
    const stale: string[] = [];
    for (const [node, beat] of beats) {
      if (beat === undefined) {
        this.seen.delete(node);
        continue;
      }
      const prev = this.seen.get(node);
      if (!prev || prev.beat !== beat) {
        this.seen.set(node, { beat, at: answeredAt });
        continue;
      }
      if (sentAt - prev.at > this.windowMs) stale.push(node);
    }
    for (const node of [...this.seen.keys()]) if (!beats.has(node)) this.seen.delete(node);
    return stale.sort();
  }

  /** How long a node's beat has stood still, as of `now` (null: no beat seen). */
  silentMs(node: string, now: number): number | null {
    const s = this.seen.get(node);
    return s ? now - s.at : null;
  }
}
