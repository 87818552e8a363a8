// The cluster queue's decision: which queued moves may start now. Pure (the leader applies
// it with etcd transactions). Limits per source node, per destination node and per cluster;
// priority first, then first come first served; a move held back by its own nodes' limits
// does not hold back moves between other nodes. A move into a paused node is never admitted
// (its source sees the pause and fails the move, ClusterQueue.waitAdmitted).
import { RANK, type Limits, type QueueItem } from './model.js';

export function queueOrder(items: QueueItem[]): QueueItem[] {
  return items
    .filter((i) => i.state === 'queued')
    .sort((a, b) => RANK[a.priority] - RANK[b.priority] || a.seq - b.seq || a.id.localeCompare(b.id));
}

/** Position of each queued item (1 = next), in queue order. */
export function positions(items: QueueItem[]): Map<string, number> {
  return new Map(queueOrder(items).map((i, n) => [i.id, n + 1]));
}

/** Per-node limits below the configured ones (adaptive concurrency), by node. */
export interface NodeLimits {
  outgoing(node: string, max: number): number;
  incoming(node: string, max: number): number;
}

export function schedule(
  items: QueueItem[],
  limits: Pick<Limits, 'maxOutgoing' | 'maxIncoming' | 'maxTotal'>,
  paused: ReadonlySet<string> = new Set(),
  per?: NodeLimits,
): string[] {
  const maxOut = (n: string): number => (per ? per.outgoing(n, limits.maxOutgoing) : limits.maxOutgoing);
  const maxIn = (n: string): number => (per ? per.incoming(n, limits.maxIncoming) : limits.maxIncoming);
  const out = new Map<string, number>();
  const inc = new Map<string, number>();
  let total = 0;
  for (const i of items) {
    if (i.state !== 'admitted') continue;
    out.set(i.from, (out.get(i.from) ?? 0) + 1);
    inc.set(i.to, (inc.get(i.to) ?? 0) + 1);
    total++;
  }
  const admit: string[] = [];
  for (const i of queueOrder(items)) {
    if (total >= limits.maxTotal) break;
    if (paused.has(i.to)) continue;
    if ((out.get(i.from) ?? 0) >= maxOut(i.from) || (inc.get(i.to) ?? 0) >= maxIn(i.to)) continue;
    admit.push(i.id);
    out.set(i.from, (out.get(i.from) ?? 0) + 1);
    inc.set(i.to, (inc.get(i.to) ?? 0) + 1);
    total++;
  }
  return admit;
}
