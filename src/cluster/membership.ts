// Cluster membership of one agent: it registers as a member (persistent key) and keeps a
// node key alive with an etcd lease; a node whose lease expires is down. Other agents, the
// CLI and later the leader read the same keys.
import { EtcdStore, type ClusterStore, type Lease } from './store.js';
import { FerryError, messageOf } from '../errors.js';
import type { EventBus } from '../agent/events.js';
import { HaMonitor } from './ha.js';

export interface ClusterConfig { name: string; endpoints: string[] }
export interface NodeView { name: string; endpoint: string; state: 'up' | 'down'; since: string | null }
export interface ClusterView { name: string; nodes: NodeView[] }

/** Failure detection: a node is down at most this long after it stops renewing. */
export const NODE_TTL_S = 5;

export class Membership {
  store: ClusterStore | null = null;
  private ha: HaMonitor | null = null;
  /** Called when this node's lease is lost: stop HA VMs before the cluster restarts them elsewhere. */
  onFence: () => Promise<void> = async () => undefined;
  private lease: Lease | null = null;
  stopped = false;

  constructor(private cfg: ClusterConfig, private node: { name: string; endpoint: string }, private tls: { ca: string; cert: string; key: string }, private events: EventBus) {}

  async start(opts: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.stopped) throw new FerryError('E_STORE_CLOSED', 'Cannot join the cluster: the agent is stopping');
    this.store ??= await EtcdStore.connect({ endpoints: this.cfg.endpoints, tls: this.tls, prefix: `/ferry/clusters/${this.cfg.name}/`, dialTimeoutMs: 15_000, ...(opts.signal ? { signal: opts.signal } : {}) });
    await this.store.put(`members/${this.node.name}`, JSON.stringify({ endpoint: this.node.endpoint, joinedAt: new Date().toISOString() }));
    await this.heartbeat();
    if (!this.ha) {
      this.ha = new HaMonitor(this.store, { name: this.node.name, tls: this.tls, events: this.events });
      this.ha.start();
    }
  }

  /** (Re)grants the node's lease and puts its node key; retried while the agent runs. */
  private async heartbeat(): Promise<void> {
    const store = this.store!;
    this.lease = await store.grantLease(NODE_TTL_S, {
      onLost: (err) => {
        this.events.emit('cluster.lease-lost', { node: this.node.name, reason: err.message });
        // Self-fence: the leader will restart our HA VMs elsewhere once the lease expires.
        if (!this.stopped) void this.onFence().finally(() => this.rejoin());
      },
    });
    await store.put(`nodes/${this.node.name}`, JSON.stringify({ endpoint: this.node.endpoint, since: new Date().toISOString() }), { lease: this.lease });
    this.events.emit('cluster.joined', { node: this.node.name, cluster: this.cfg.name });
  }

  private async rejoin(): Promise<void> {
    while (!this.stopped) {
      try { await this.heartbeat(); return; } catch { await new Promise((r) => setTimeout(r, 1000)); }
    }
  }

  async view(): Promise<ClusterView> {
    if (!this.store) throw new FerryError('E_CLUSTER_UNAVAILABLE', `Cannot read cluster '${this.cfg.name}': this agent is not connected to its store yet`);
    try {
      const members = await this.store.getPrefix('members/');
      const nodes = await this.store.getPrefix('nodes/');
      const out: NodeView[] = Object.entries(members).map(([k, v]) => {
        const name = k.slice('members/'.length);
        const live = nodes[`nodes/${name}`];
        const m = JSON.parse(v) as { endpoint: string };
        return { name, endpoint: m.endpoint, state: live ? 'up' : 'down', since: live ? (JSON.parse(live) as { since: string }).since : null };
      });
      return { name: this.cfg.name, nodes: out.sort((a, b) => a.name.localeCompare(b.name)) };
    } catch (err) {
      throw new FerryError('E_CLUSTER_UNAVAILABLE', `Cannot read cluster '${this.cfg.name}': ${messageOf(err)}`, { cause: err });
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.ha?.stop();
    await this.store?.close();
  }
}
