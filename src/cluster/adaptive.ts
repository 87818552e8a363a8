// Adaptive concurrency (issue #17.5): how many moves the leader lets leave (or reach) one node
// at once, learnt from the moves of drains and fail-backs as they end, within the configured
// limit. A fixed limit is either too low for a fast link (moves wait while the link idles) or
// too high for a slow one (moves share the link, each takes longer, dirtying guests stop
// converging and their downtime grows). Per node and direction the level climbs one step at a
// time while a further move still adds throughput, steps back when it adds none (the link or
// a CPU is saturated: both show as no more bytes per second in all), and steps back when a
// move missed its downtime limit. Pure logic: the leader feeds it and reads it.

/** One finished live move, as its source's record tells it. */
export interface MoveOutcome {
  from: string;
  to: string;
  /** Bytes it sent, and how long it took from start to end. */
  bytes: number;
  totalMs: number;
  completed: boolean;
  downtimeMs: number | null;
  maxDowntimeMs: number;
}

/** A level change, for the leader's event and log. */
export interface LevelChange {
  node: string;
  direction: 'outgoing' | 'incoming';
  from: number;
  to: number;
  reason: string;
}

/** A further move must add this much throughput in all to be worth running. */
const GAIN = 1.1;
/** Weight of a new sample in a level's throughput average. */
const ALPHA = 0.5;

class Level {
  level: number;
  /** Observations to wait before the next step up (each change is measured before the next). */
  hold = 0;
  /** Throughput in all (bytes/s) seen at each level: a move's rate × the level it ran at. */
  readonly seen = new Map<number, number>();
  constructor(initial: number) {
    this.level = initial;
  }
}

export class AdaptiveConcurrency {
  private readonly levels = new Map<string, Level>();

  /** `initial`: where each node starts (today's fixed default, 2). */
  constructor(private readonly initial = 2) {}

  /** How many moves may leave (or reach) `node` now: the learnt level, never above `max`. */
  limit(node: string, direction: 'outgoing' | 'incoming', max: number): number {
    const l = this.levels.get(`${direction}\n${node}`);
    return Math.max(1, Math.min(max, l ? l.level : this.initial));
  }

  /** Learns from a finished move; returns the level changes it caused. */
  observe(o: MoveOutcome, max: { outgoing: number; incoming: number }): LevelChange[] {
    const changes: LevelChange[] = [];
    for (const [direction, node] of [
      ['outgoing', o.from],
      ['incoming', o.to],
    ] as const) {
      const c = this.step(this.at(node, direction), o, max[direction]);
      if (c) changes.push({ node, direction, ...c });
    }
    return changes;
  }

  private at(node: string, direction: 'outgoing' | 'incoming'): Level {
    const k = `${direction}\n${node}`;
    let l = this.levels.get(k);
    if (!l) this.levels.set(k, (l = new Level(this.initial)));
    return l;
  }

  private step(l: Level, o: MoveOutcome, max: number): { from: number; to: number; reason: string } | null {
    const from = Math.max(1, Math.min(max, l.level));
    l.level = from;
    const missed = !o.completed || (o.downtimeMs !== null && o.downtimeMs > o.maxDowntimeMs);
    if (missed) {
      l.hold = 2;
      if (from === 1) return null;
      l.level = from - 1;
      return { from, to: l.level, reason: o.completed ? 'a move missed its downtime limit' : 'a move failed' };
    }
    if (o.totalMs <= 0) return null;
    const total = (o.bytes / (o.totalMs / 1000)) * from;
    const prev = l.seen.get(from);
    const now = prev === undefined ? total : prev * (1 - ALPHA) + total * ALPHA;
    l.seen.set(from, now);
    const below = l.seen.get(from - 1);
    if (below !== undefined && now < below * GAIN) {
      l.hold = 3;
      l.level = from - 1;
      return { from, to: l.level, reason: `${from} at once moved no more than ${from - 1} (link or CPU saturated)` };
    }
    if (l.hold > 0) {
      l.hold--;
      return null;
    }
    if (from < max) {
      const above = l.seen.get(from + 1);
      if (above === undefined || above >= now * GAIN) {
        l.hold = 1;
        l.level = from + 1;
        return { from, to: l.level, reason: 'more moves at once may add throughput' };
      }
      l.seen.delete(from + 1); // known not to pay; forgotten, so it is tried again after the hold
    }
    // One level lower never measured (the start is 2): fewer at once may move as much.
    if (from > 1 && !l.seen.has(from - 1)) {
      l.hold = 1;
      l.level = from - 1;
      return { from, to: l.level, reason: 'fewer moves at once may move as much' };
    }
    l.hold = 3;
    return null;
  }
}
