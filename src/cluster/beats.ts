// Node beats: proof that a node's own agent (or its host's fence) is alive, which a lease alone
// is not. etcd lets any authenticated client keep any lease alive by id (LeaseKeepAlive checks no
// key permission; etcd 3.4/3.5), so a hostile host could keep a dead node's lease, and with it
// its node key, alive forever. Each node therefore also rewrites its member key (members/<node>,
// which only it may write) with a new `beat` every BEAT_PERIOD_MS, and the leader treats a node
// whose beat has not changed for the beat window as down, as if its lease had expired. The node's
// own rule mirrors the lease's: no beat taken for the window less FENCE_MARGIN_MS and it fences
// itself (membership.ts; its host's fence process counts beats the same way), before the leader
// can count the window out. Each beat carries the window its writer fences by, and the leader
// counts that one: nodes of another version (a rolling upgrade) keep their own.
// docs/cluster.md § How a dead node is seen, docs/performance.md § Why a VM never runs twice.

/**
 * The leader counts a node down when its beat stood still this long (the window this version's
 * beats declare). A beat is a put, committed through etcd's Raft: with the window less the fence
 * margin before the node fences itself, an etcd leader election (~1–2 s without writes) right
 * after a beat must still leave attempts (docs/performance.md, the measured gaps). A node that
 * dies is seen down by whichever comes first, its lease expiring or its beat's window.
 */
export const BEAT_WINDOW_MS = 4000;
/** How often a node writes its beat (one small put per node each time). */
export const BEAT_PERIOD_MS = 500;
/** The window of a beat that declares none: written by a node of the first version with beats. */
export const LEGACY_BEAT_WINDOW_MS = 6000;

/** A node's last beat as the leader read it, and the window its writer fences by. */
export interface Beat {
  beat: number;
  windowMs: number;
}

/** The beat in a member record (undefined: a node from before beats, judged by its lease alone). */
export function beatOf(member: { beat?: number | undefined; beatWindowMs?: number | undefined }): Beat | undefined {
  return member.beat === undefined
    ? undefined
    : { beat: member.beat, windowMs: member.beatWindowMs ?? LEGACY_BEAT_WINDOW_MS };
}

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
 * An observer's view of the nodes' beats. Pure bookkeeping; it is fed each read of the member
 * keys. A beat counts from when this observer first *saw* it (the answer's arrival, never
 * earlier than its write), and a node is stale only on a read *sent* a whole window (the one
 * that beat declared) after that: by then the node has gone without a written beat for longer
 * than its own fence margin, so it fenced itself (or is dead). Any observer's sightings obey
 * this, so a node that becomes leader keeps the ones it made while it was not. A node that
 * never wrote a beat (an agent before beats) is judged by its lease alone.
 */
export class BeatTracker {
  private readonly seen = new Map<string, Beat & { at: number }>();

  /** One read of the member keys: sent at `sentAt`, answered at `answeredAt`, each node's beat (if any). */
  observe(beats: ReadonlyMap<string, Beat | undefined>, sentAt: number, answeredAt: number): string[] {
    const stale: string[] = [];
    for (const [node, b] of beats) {
      if (b === undefined) {
        this.seen.delete(node);
        continue;
      }
      const prev = this.seen.get(node);
      if (!prev || prev.beat !== b.beat) {
        this.seen.set(node, { ...b, at: answeredAt });
        continue;
      }
      if (sentAt - prev.at > prev.windowMs) stale.push(node);
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
