// Cluster membership of one agent: it registers as a member (persistent key) and keeps a
// node key alive with an etcd lease; a node whose lease expires is down. Other agents, the
// CLI and later the leader read the same keys.
import { EtcdStore, type ClusterStore, type Lease } from './store.js';
import { FerryError, messageOf } from '../errors.js';
import type { EventBus } from '../events/bus.js';
import { HaMonitor, type HaRecord } from './ha.js';
import { ClusterQueue, readQueue } from './queue.js';
import { positions } from './schedule.js';
import { keys, parseLimits, type Batch } from './model.js';
import { policyOf, readNodes } from './drain.js';
import type { ClusterView, NodeView } from '../api/schemas.js';

export interface ClusterConfig {
  name: string;
  endpoints: string[];
  leaseSeconds?: number;
}
export type { ClusterView, NodeView };

/** Failure detection: a node is down at most this long after it stops renewing. */
export const NODE_TTL_S = 5;
/**
 * An agent that has not renewed its lease for this long stops its HA VMs: well before etcd
 * can expire the lease (NODE_TTL_S after the last renewal etcd saw) and the leader restarts
 * them elsewhere, so a VM never runs twice.
 */
export const FENCE_AFTER_MS = 2500;

export class Membership {
  store: ClusterStore | null = null;
  queue: ClusterQueue | null = null;
  ha: HaMonitor | null = null;
  /** Called when this node's lease is lost: stop HA VMs before the cluster restarts them elsewhere. */
  onFence: () => Promise<void> = async () => undefined;
  /** Called after the node got a new lease following a loss (reconcile what the cluster decided meanwhile). */
  onRejoined: () => Promise<void> = async () => undefined;
  private lease: Lease | null = null;
  stopped = false;

  constructor(
    private cfg: ClusterConfig,
    private node: { name: string; endpoint: string },
    private tls: { ca: string; cert: string; key: string },
    private events: EventBus,
  ) {}

  async start(opts: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.stopped) throw new FerryError('E_STORE_CLOSED', 'Cannot join the cluster: the agent is stopping');
    this.store ??= await EtcdStore.connect({
      endpoints: this.cfg.endpoints,
      tls: this.tls,
      prefix: `/ferry/clusters/${this.cfg.name}/`,
      dialTimeoutMs: 15_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    await this.store.put(
      `members/${this.node.name}`,
      JSON.stringify({ endpoint: this.node.endpoint, joinedAt: new Date().toISOString() }),
    );
    await this.heartbeat();
    if (!this.queue) {
      this.queue = new ClusterQueue(this.store, this.node.name, () => this.lease);
      await this.queue.start();
    }
    if (!this.ha) {
      this.ha = new HaMonitor(this.store, { name: this.node.name, tls: this.tls, events: this.events });
      this.ha.start();
    }
  }

  /** (Re)grants the node's lease and puts its node key; retried while the agent runs. */
  private async heartbeat(): Promise<void> {
    const store = this.store!;
    const ttl = this.cfg.leaseSeconds ?? NODE_TTL_S;
    this.lease = await store.grantLease(ttl, {
      // Fence with a margin: 2.5 s of a 5 s lease (half), whatever the TTL.
      lossAfterMs: Math.round(ttl * 1000 * (FENCE_AFTER_MS / (NODE_TTL_S * 1000))),
      onLost: (err) => {
        this.events.emit('cluster.lease-lost', { node: this.node.name, reason: err.message });
        // Self-fence: the leader will restart our HA VMs elsewhere once the lease expires.
        if (!this.stopped) void this.onFence().finally(() => this.rejoin());
      },
    });
    await store.put(
      `nodes/${this.node.name}`,
      JSON.stringify({ endpoint: this.node.endpoint, since: new Date().toISOString() }),
      { lease: this.lease },
    );
    this.events.emit('cluster.joined', { node: this.node.name, cluster: this.cfg.name });
  }

  private async rejoin(): Promise<void> {
    while (!this.stopped) {
      try {
        await this.heartbeat();
        await this.onRejoined().catch(() => undefined);
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /** The store, or a clear error while this agent has not joined yet. */
  need(what: string): ClusterStore {
    if (!this.store)
      throw new FerryError(
        'E_CLUSTER_UNAVAILABLE',
        `Cannot ${what}: this agent is not connected to cluster '${this.cfg.name}' yet; wait a few seconds and retry, or check its etcd (ferry lab status)`,
      );
    return this.store;
  }

  get name(): string {
    return this.cfg.name;
  }
  get currentLease(): Lease | null {
    return this.lease;
  }

  async view(): Promise<ClusterView> {
    const store = this.need(`read cluster '${this.cfg.name}'`);
    try {
      const [nodes, vmsRaw, items, batchesRaw, limitsRaw, leader] = await Promise.all([
        readNodes(store),
        store.getPrefix('vms/'),
        readQueue(store),
        store.getPrefix('batches/'),
        store.get(keys.config),
        store.leader('leader'),
      ]);
      const out: NodeView[] = Object.entries(nodes.members).map(([name, m]) => {
        const live = nodes.up[name];
        const state = !live ? 'down' : nodes.paused.has(name) ? 'paused' : 'up';
        return { name, endpoint: m.endpoint, state, since: live?.since ?? null };
      });
      const pos = positions(items);
      return {
        name: this.cfg.name,
        leader,
        nodes: out.sort((a, b) => a.name.localeCompare(b.name)),
        vms: Object.values(vmsRaw)
          .map((v) => JSON.parse(v) as HaRecord)
          .map((r) => ({
            name: r.name,
            owner: r.owner,
            generation: r.generation,
            memoryMiB: r.memoryMiB,
            ...policyOf(r.spec),
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
        limits: parseLimits(limitsRaw),
        batches: Object.values(batchesRaw)
          .map((v) => JSON.parse(v) as Batch)
          .sort((a, b) => a.node.localeCompare(b.node)),
      };
    } catch (err) {
      throw new FerryError('E_CLUSTER_UNAVAILABLE', `Cannot read cluster '${this.cfg.name}': ${messageOf(err)}`, {
        cause: err,
      });
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.queue?.stop();
    await this.ha?.stop();
    await this.store?.close();
  }
}
