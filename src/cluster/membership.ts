// Cluster membership of one agent: it registers as a member (persistent key, rewritten with a
// beat every 0.5 s: beats.ts) and keeps a node key alive with an etcd lease; a node whose
// lease expires, or whose beat stands still, is down. Other agents, the
// CLI and later the leader read the same keys.
import { EtcdStore, type ClusterStore, type Lease } from './store.js';
import { FerryError, messageOf } from '../errors.js';
import type { EventBus } from '../events/bus.js';
import { HaMonitor } from './ha.js';
import { ClusterQueue } from './queue.js';
import * as K from './keys.js';
import { clusterView } from './view.js';
import { DEFAULT_GRACE_MS, LivenessWriter, ensureFence, fenceRenewedAt, takeFenceReport } from './fence.js';
import { BEAT_PERIOD_MS, BEAT_WINDOW_MS, beatLossMs, nextBeat, renewedAt } from './beats.js';
import type { ClusterView, NodeView } from '../api/schemas.js';

export interface ClusterConfig {
  name: string;
  endpoints: string[];
  leaseSeconds?: number;
  /** How long the host's fence keeps this node's lease while the agent's process is gone (a restart; default 60 s). */
  restartGraceSeconds?: number;
}
export type { ClusterView, NodeView };

/** Failure detection: a node is down at most this long after its last renewal (plus etcd's own delays). */
export const NODE_TTL_S = 4;
/**
 * The self-fence deadline stays this far below the lease's expiry. An agent that has not
 * renewed its lease for TTL − FENCE_MARGIN_MS stops its HA VMs (and so does its host's fence
 * process, on the same rule): before etcd can expire the lease — no earlier than TTL after the
 * last keepalive it received, which was sent no earlier than the one the agent counts from —
 * and so before the leader can restart them elsewhere. The margin covers the checks' periods
 * (100 ms each), the kill itself, a stalled event loop and clock-rate error (≤ 0.1 % over a
 * few seconds); docs/performance.md § Fail-over has the whole argument.
 */
export const FENCE_MARGIN_MS = 1000;
/** The self-fence deadline of a node lease of `ttlS` seconds (3 s of the default 4 s lease). */
export function fenceAfterMs(ttlS: number): number {
  return ttlS * 1000 - FENCE_MARGIN_MS;
}

export class Membership {
  store: ClusterStore | null = null;
  queue: ClusterQueue | null = null;
  ha: HaMonitor | null = null;
  /** Called when this node's lease is lost: stop HA VMs before the cluster restarts them elsewhere. */
  onFence: () => Promise<void> = () => Promise.resolve();
  /**
   * Called each time the node is about to announce itself (join, and rejoin after a lost lease),
   * before its node key is put: it forgets here the HA VMs the cluster gave to other nodes
   * meanwhile, so nothing decided once it is up (a fail-back into it) meets their stale copies.
   * Only forgetting: whatever claims or starts a VM waits until the node is up (onRejoined), or
   * the leader would see its owner down and start it elsewhere too.
   */
  beforeAnnounce: () => Promise<void> = () => Promise.resolve();
  /** Called after the node got a new lease following a loss (reconcile what the cluster decided meanwhile). */
  onRejoined: () => Promise<void> = () => Promise.resolve();
  /**
   * The agent's data folder. When set, start() launches the host's fence process (fence.ts)
   * and each lease renewal is written there for it.
   */
  dataDir: string | null = null;
  /** HA VMs the fence process killed while this agent was away: this node decides whether they run again. */
  onWatchdogFenced: (vms: string[]) => void = () => undefined;
  private lease: Lease | null = null;
  private liveness: LivenessWriter | null = null;
  /** This node's member record, rewritten with each beat (beats.ts). */
  private member: { endpoint: string; joinedAt: string } | null = null;
  private beat = 0;
  /** When the last beat that etcd took, and the last successful keepalive, were sent (ms). */
  private beatAt = 0;
  private keptAt = 0;
  private beatTimer: NodeJS.Timeout | null = null;
  /** Fencing for a lost lease or beat, until the node has joined again. */
  private fencing = false;
  /**
   * The node key is on the current lease: only then is the lease handed to the fence (the
   * liveness file). Until then the fence keeps guarding the lease that still holds the key (a
   * restarted agent's predecessor's, which it keeps alive and beats for).
   */
  private announced = false;
  stopped = false;
  /** A value in etcd that does not parse: reported, and left out of every decision. */
  readonly onBad: K.OnBad = (bad) => {
    this.events.emit('cluster.bad-value', bad);
  };

  constructor(
    private cfg: ClusterConfig,
    private node: { name: string; endpoint: string },
    private tls: { ca: string; cert: string; key: string },
    private events: EventBus,
  ) {}

  async start(opts: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.stopped) throw new FerryError('E_STORE_CLOSED', 'Cannot join the cluster: the agent is stopping');
    if (this.dataDir && !this.liveness) {
      try {
        await ensureFence(this.dataDir);
      } catch (err) {
        this.events.emit('cluster.error', { message: `cannot start the fence process: ${messageOf(err)}` });
      }
      this.liveness = new LivenessWriter(this.dataDir);
    }
    this.store ??= await EtcdStore.connect({
      endpoints: this.cfg.endpoints,
      tls: this.tls,
      prefix: `/ferry/clusters/${this.cfg.name}/`,
      dialTimeoutMs: 15_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    this.member ??= { endpoint: this.node.endpoint, joinedAt: new Date().toISOString() };
    // Beats from the start, not once joined: joining (reconciling, the node key) can take
    // seconds on a loaded host, and the beat may not stand still meanwhile (docs/cluster.md).
    this.beatLoop();
    await this.heartbeat();
    if (!this.queue) {
      this.queue = new ClusterQueue(this.store, this.node.name, () => this.lease, this.onBad);
      await this.queue.start();
    }
    if (!this.ha) {
      this.ha = new HaMonitor(this.store, { name: this.node.name, tls: this.tls, events: this.events });
      this.ha.start();
    }
  }

  /** Joined, its node key on a lease it renews (not fencing, not rejoining, not stopping). */
  get up(): boolean {
    return this.announced && !this.fencing && !this.stopped && !!this.lease && !this.lease.lost;
  }

  private get ttlS(): number {
    return this.cfg.leaseSeconds ?? NODE_TTL_S;
  }

  /**
   * Writes the next beat into this node's member key (beats.ts). Its send time counts only once
   * etcd took it: the leader may count the beat window from no earlier than that.
   */
  private async putBeat(): Promise<void> {
    const store = this.need('write the node beat');
    const member = this.member ?? { endpoint: this.node.endpoint, joinedAt: new Date().toISOString() };
    const sentAt = Date.now();
    this.beat = nextBeat(this.beat, sentAt);
    // Each attempt short (as a keepalive): a frozen etcd member costs one attempt, not the margin.
    const timeoutMs = 1000;
    const record = { ...member, beat: this.beat, beatWindowMs: BEAT_WINDOW_MS };
    await store.put(K.members.key(this.node.name), K.members.encode(record), { timeoutMs });
    this.beatAt = Math.max(this.beatAt, sentAt);
    this.writeLiveness();
  }

  /**
   * A beat every BEAT_PERIOD_MS while the agent runs (100 ms after a failure), and the
   * rule of the lease for it: none taken for the beat window less the margin, and the node fences itself.
   */
  private beatLoop(): void {
    if (this.beatTimer) return;
    const period = BEAT_PERIOD_MS;
    const lossAfterMs = beatLossMs(FENCE_MARGIN_MS);
    let next = Date.now() + period;
    let inFlight = false;
    this.beatTimer = setInterval(() => {
      const now = Date.now();
      if (this.stopped) return;
      if (!this.fencing && this.lease && now - this.beatAt > lossAfterMs) {
        // The host's fence writes the beat too while it bridges this agent's late renewals.
        const at = Math.max(this.beatAt, this.renewedByFence());
        if (now - at > lossAfterMs) {
          this.lost(`no beat was written for ${now - at} ms (limit ${lossAfterMs} ms)`);
          return;
        }
      }
      if (inFlight || now < next) return;
      inFlight = true;
      this.putBeat()
        .then(() => (next = Date.now() + period))
        .catch(() => (next = Date.now() + 100))
        .finally(() => (inFlight = false));
    }, 100);
    this.beatTimer.unref();
  }

  /** When the host's fence last renewed this agent's lease and beat for it (0: never). */
  private renewedByFence(): number {
    return this.dataDir && this.lease ? fenceRenewedAt(this.dataDir, this.lease.id) : 0;
  }

  /** The lease, or the beat, is lost: stop the HA VMs before the cluster restarts them elsewhere, then join again. */
  private lost(reason: string): void {
    if (this.fencing) return;
    this.events.emit('cluster.lease-lost', { node: this.node.name, reason });
    if (this.stopped) return;
    // The host's fence must not renew a lease given up (it bridges a running agent's late renewals).
    this.writeLiveness(true);
    this.fencing = true;
    // No more keepalives: its node key goes with the lease, and a new lease is granted on rejoining.
    if (this.lease && !this.lease.lost) this.lease.release();
    this.announced = false;
    void this.onFence().finally(() => this.rejoin());
  }

  /**
   * For the host's fence: the lease, and the older of the last keepalive and the last beat
   * (both are needed); only once the node key is on that lease (`announced`). `released`: the
   * agent gives the lease up (it fences itself).
   */
  private writeLiveness(released = false): void {
    const lease = this.lease;
    if (!lease || this.fencing || !this.announced) return;
    const ttl = this.ttlS;
    void this.liveness?.write({
      version: 1,
      node: this.node.name,
      cluster: this.cfg.name,
      endpoints: this.cfg.endpoints,
      tls: this.tls,
      leaseId: lease.id,
      ttlMs: ttl * 1000,
      lossAfterMs: fenceAfterMs(ttl),
      renewedAt: renewedAt(this.keptAt, this.beatAt, fenceAfterMs(ttl), beatLossMs(FENCE_MARGIN_MS)),
      agentPid: process.pid,
      graceMs: this.cfg.restartGraceSeconds === undefined ? DEFAULT_GRACE_MS : this.cfg.restartGraceSeconds * 1000,
      ...(this.member ? { member: this.member } : {}),
      ...(released ? { released: true } : {}),
    });
  }

  /** (Re)grants the node's lease and puts its node key; retried while the agent runs. */
  private async heartbeat(): Promise<void> {
    const store = this.need('renew the node lease');
    const ttl = this.ttlS;
    const lossAfterMs = fenceAfterMs(ttl);
    this.announced = false;
    // A fresh beat first: the node counts its beat window from one etcd took, as the leader does.
    await this.putBeat();
    const grantedAt = Date.now();
    this.keptAt = grantedAt;
    this.lease = await store.grantLease(ttl, {
      lossAfterMs,
      onRenewed: (at) => {
        this.keptAt = at;
        this.writeLiveness();
      },
      renewedElsewhere: () => this.renewedByFence(),
      onLost: (err) => {
        // Self-fence: the leader will restart our HA VMs elsewhere once the lease expires.
        this.lost(err.message);
      },
    });
    this.fencing = false;
    this.keptAt = Math.max(this.keptAt, grantedAt);
    if (this.dataDir) {
      const fenced = await takeFenceReport(this.dataDir);
      if (fenced.length) this.onWatchdogFenced(fenced);
    }
    await this.beforeAnnounce().catch((err: unknown) => {
      this.events.emit('cluster.error', { message: `cannot reconcile before joining: ${messageOf(err)}` });
    });
    await store.put(
      K.nodes.key(this.node.name),
      K.nodes.encode({ endpoint: this.node.endpoint, since: new Date().toISOString() }),
      { lease: this.lease },
    );
    // The key is on this lease now: the fence guards it from here, by this agent's own renewals.
    this.announced = true;
    this.writeLiveness();
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
        `Cannot ${what}: this agent is not connected to cluster '${this.cfg.name}' yet; ` +
          'wait a few seconds and retry, or check its etcd (ferry lab status)',
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
      return await clusterView(store, this.cfg.name, this.onBad);
    } catch (err) {
      throw new FerryError('E_CLUSTER_UNAVAILABLE', `Cannot read cluster '${this.cfg.name}': ${messageOf(err)}`, {
        cause: err,
      });
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.beatTimer) clearInterval(this.beatTimer);
    await this.queue?.stop();
    await this.ha?.stop();
    await this.store?.close();
  }
}
