// The cluster as `ferry cluster status` and the web console show it, read from etcd.
import type { ClusterView, NodeView } from '../api/schemas.js';
import type { ClusterStore } from './store.js';
import * as K from './keys.js';
import { policyOf } from './model.js';
import { readNodes } from './records.js';
import { readQueue } from './queue.js';
import { positions } from './schedule.js';

export async function clusterView(store: ClusterStore, name: string, onBad: K.OnBad): Promise<ClusterView> {
  const [nodes, pauses, vms, items, batches, limits, leader] = await Promise.all([
    readNodes(store, onBad),
    K.readAll(store, K.paused, onBad),
    K.readAll(store, K.vms, onBad),
    readQueue(store, onBad),
    K.readAll(store, K.batches, onBad),
    K.readLimits(store, onBad),
    store.leader(K.election.name),
  ]);
  const out: NodeView[] = Object.entries(nodes.members).map(([node, m]) => {
    const live = nodes.up[node];
    const state = !live ? 'down' : nodes.paused.has(node) ? 'paused' : 'up';
    const p = pauses.get(node)?.value ?? null;
    return { name: node, endpoint: m.endpoint, state, since: live?.since ?? null, paused: p };
  });
  const pos = positions(items);
  return {
    name,
    leader,
    nodes: out.sort((a, b) => a.name.localeCompare(b.name)),
    vms: [...vms.values()]
      .map(({ value: r }) => ({
        name: r.name,
        owner: r.owner,
        generation: r.generation,
        memoryMiB: r.memoryMiB,
        ...policyOf(r.spec),
        away: r.away ?? null,
        restartFrom: r.restartFrom ?? null,
      }))
      .sort((a, b) => a.name.localeCompare(b.name)),
    queue: items
      .map((i) => ({
        id: i.id,
        vm: i.vm,
        from: i.from,
        to: i.to,
        priority: i.priority,
        state: i.state,
        position: pos.get(i.id) ?? null,
        batch: i.batch ?? null,
      }))
      .sort((a, b) => (a.position ?? 0) - (b.position ?? 0) || a.vm.localeCompare(b.vm)),
    limits,
    batches: [...batches.values()].map((e) => e.value).sort((a, b) => a.node.localeCompare(b.node)),
  };
}
