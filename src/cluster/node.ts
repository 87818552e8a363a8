// This host as a node of a failover cluster: joining (in the background, until etcd has a
// quorum), clustered VMs (add-vm, remove-vm, their records in etcd), HA restarts the leader
// asks of this node, self-fencing when the node's lease is lost, and reconciling with what
// the cluster decided meanwhile. It reaches the host's VMs only through NodeVms, which it
// declares here; the agent provides it.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, NotFoundError, messageOf } from '../errors.js';
import type { ClusterView, VmView } from '../api/schemas.js';
import type { Priority } from '../api/defaults.js';
import type { EventBus } from '../events/bus.js';
import type { PoolDef } from '../storage/pools.js';
import { loadVm, saveVm } from '../vm/folder.js';
import { parseVmSpec, type VmSpec } from '../vm/spec.js';
import { sleep } from '../util/exec.js';
import { definedFields } from '../util/fields.js';
import { Membership, type ClusterConfig } from './membership.js';
import { putHaRecord, type HaRecord } from './ha.js';
import { assertHaStorage, haFiles, sharedPoolHint } from './ha-storage.js';
import { DEFAULT_POLICY, type ClusterPolicy } from './model.js';
import * as K from './keys.js';
import type { ClusterCtx } from './context.js';
import { EtcdStore, type ClusterStore, type StoreCallOptions } from './store.js';
import { testFault, testHold } from '../migration/policy.js';

/** What the cluster node needs from the host's VM inventory. */
export interface NodeVms {
  /** VMs registered on this host. */
  registered(): Array<{ name: string; configPath: string }>;
  isRunning(name: string): boolean;
  /** Changes a VM's spec under its gate (refused while it moves): `change` checks, edits and saves it. */
  configure(name: string, change: (spec: VmSpec) => Promise<void>): Promise<VmView>;
  /** Registers the VM unless it is (checking this host may use its files) and boots it unless it runs. */
  haStart(spec: VmSpec): Promise<void>;
  start(name: string): Promise<unknown>;
  /** Kills the VM's QEMU at once, whatever its phase; false when it was not running. */
  kill(name: string): Promise<boolean>;
  /** Forgets a VM another node owns now (its QEMU killed if it runs); its files stay. */
  forget(name: string, reason: string): Promise<void>;
}

export interface ClusterNodeDeps {
  name: string;
  /** This agent's URL as other nodes reach it. */
  endpoint: string;
  /** The agent's data folder (agent.json records the cluster it joined). */
  dataDir: string;
  tls: { ca: string; cert: string; key: string };
  events: EventBus;
  vms: NodeVms;
  pools: () => PoolDef[];
}

/** What the drain, resume and limits routes work with. */
export type ClusterContext = ClusterCtx;

/** The cluster's record of one HA VM, as this node reads it. */
type HaRecordRead =
  { kind: 'none' } | { kind: 'record'; raw: string; record: HaRecord } | { kind: 'bad'; bad: K.BadValue };

/** An HA VM whose QEMU dies on its own is restarted on its node once in this window (Hyper-V: 1 in 15 min). */
const CRASH_WINDOW_MS = 15 * 60_000;

export class ClusterNode {
  private member: Membership | null = null;
  private config: ClusterConfig | null = null;
  /** HA VMs this node stopped because it lost its cluster lease (self-fence). */
  private fenced = new Set<string>();
  /** When each HA VM was last restarted here after its QEMU died on its own. */
  private readonly crashRestarts = new Map<string, number>();

  constructor(private readonly d: ClusterNodeDeps) {}

  /** Set once this host belongs to a cluster (joined or still joining). */
  get membership(): Membership | null {
    return this.member;
  }

  /** The membership, or E_CLUSTER_NOT_FOUND when this host is in no cluster. */
  need(what: string): Membership {
    if (!this.member)
      throw new NotFoundError(
        'E_CLUSTER_NOT_FOUND',
        `Cannot ${what}: host '${this.d.name}' is not in a cluster; ` +
          "start the lab with 'ferry lab up --cluster' or join one with 'ferry cluster join'",
        {},
      );
    return this.member;
  }

  context(what: string): ClusterContext {
    const m = this.need(what);
    return { store: m.need(what), self: this.d.name, tls: this.d.tls, onBad: m.onBad };
  }

  /**
   * Joins the cluster in the background: joining needs a quorum of etcd, and until then the
   * host works standalone and keeps trying. Resolves once joined (or the agent stops).
   */
  enable(cluster: ClusterConfig, opts: { onRetry?: (err: unknown) => void } = {}): Promise<void> {
    const membership = new Membership(
      cluster,
      { name: this.d.name, endpoint: this.d.endpoint },
      this.d.tls,
      this.d.events,
    );
    membership.onFence = () => this.fence();
    membership.beforeAnnounce = () => this.forgetGivenAway();
    membership.onRejoined = () => this.reconcile();
    // The fence process (src/cluster/fence.ts) guards the HA VMs when this agent cannot.
    membership.dataDir = this.d.dataDir;
    membership.onWatchdogFenced = (vms) => {
      for (const vm of vms) this.fenced.add(vm);
    };
    this.member = membership;
    this.config = cluster;
    return (async () => {
      for (let attempt = 0; !membership.stopped; attempt++) {
        try {
          await membership.start();
          await this.reconcile();
          return;
        } catch (err) {
          if (attempt === 0) opts.onRetry?.(err);
          await sleep(2000);
        }
      }
    })();
  }

  /**
   * `ferry cluster create|join`: checks the etcd endpoints answer with this domain's
   * certificates, records the cluster in DATA/agent.json, and joins.
   */
  async join(
    body: { name: string; endpoints: string[]; create: boolean },
    opts: { signal?: AbortSignal } = {},
  ): Promise<ClusterView> {
    if (this.member) {
      if (this.config?.name === body.name) return this.member.view();
      throw new FerryError(
        'E_CLUSTER_EXISTS',
        `Cannot join cluster '${body.name}': host '${this.d.name}' is in cluster '${this.member.name}'; ` +
          'a host belongs to one cluster',
        {},
      );
    }
    const count = Object.keys(await this.probeMembers(body, opts)).length;
    if (body.create && count)
      throw new FerryError(
        'E_CLUSTER_EXISTS',
        `Cannot create cluster '${body.name}': it exists (${count} members); ` +
          `join it with 'ferry cluster join ${body.name}'`,
        {},
      );
    if (!body.create && !count)
      throw new NotFoundError(
        'E_CLUSTER_NOT_FOUND',
        `Cannot join cluster '${body.name}': it has no members at ${body.endpoints.join(', ')}; ` +
          `create it first with 'ferry cluster create ${body.name}'`,
        {},
      );
    const file = path.join(this.d.dataDir, 'agent.json');
    const cur = await fsp.readFile(file, 'utf8').then(
      (t) => JSON.parse(t) as Record<string, unknown>,
      () => ({}),
    );
    await fsp.writeFile(
      `${file}.tmp`,
      JSON.stringify({ ...cur, cluster: { name: body.name, endpoints: body.endpoints } }, null, 2),
    );
    await fsp.rename(`${file}.tmp`, file);
    await this.enable({ name: body.name, endpoints: body.endpoints });
    return this.need(`join cluster '${body.name}'`).view();
  }

  /** The cluster's members, read with this domain's certificates (E_CLUSTER_UNAVAILABLE if etcd does not answer). */
  private async probeMembers(
    body: { name: string; endpoints: string[] },
    opts: { signal?: AbortSignal },
  ): Promise<Record<string, string>> {
    const probe = await EtcdStore.connect({
      endpoints: body.endpoints,
      tls: this.d.tls,
      prefix: `/ferry/clusters/${body.name}/`,
      dialTimeoutMs: 10_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    }).catch((err: unknown) => {
      throw new FerryError(
        'E_CLUSTER_UNAVAILABLE',
        `Cannot join cluster '${body.name}': etcd does not answer at ${body.endpoints.join(', ')} ` +
          `(${messageOf(err)}); start etcd with certificates of this domain and check the URLs`,
        { cause: err },
      );
    });
    try {
      return await probe.getPrefix('members/');
    } finally {
      await probe.close();
    }
  }

  async stop(): Promise<void> {
    await this.member?.stop();
  }

  // ---- clustered VMs ----

  /** Keeps the cluster's record of an HA VM pointing at this node (errors become cluster.error events). */
  async recordHa(spec: VmSpec): Promise<void> {
    const store = this.member?.store;
    if (!spec.ha || !store) return;
    await this.putOwnRecord(store, spec);
  }

  /** The cluster's record of `spec` owned by this node (errors become cluster.error events). */
  private async putOwnRecord(store: ClusterStore, spec: VmSpec): Promise<void> {
    await this.ownRecord(store, spec).catch((err: unknown) =>
      this.d.events.emit('cluster.error', { vm: spec.name, message: messageOf(err) }),
    );
  }

  private ownRecord(store: ClusterStore, spec: VmSpec, opts: StoreCallOptions & { takeFrom?: string } = {}) {
    return putHaRecord(
      store,
      {
        name: spec.name,
        id: spec.id,
        configPath: spec.configPath,
        owner: this.d.name,
        memoryMiB: spec.memoryMiB,
        spec,
      },
      opts,
    );
  }

  /**
   * A live move's destination, before its guest runs: the HA VM's record passes from the source
   * to this node in one compare-and-swap. It fails (and the guest must not run here) when a
   * leader gave the VM to a third node meanwhile (the source was found down and its VMs
   * restarted elsewhere), or when etcd does not answer: then nobody can say the VM runs nowhere else.
   */
  async claimArrival(spec: VmSpec, source: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const store = this.member?.store;
    if (!spec.ha || !store) return;
    await this.ownRecord(store, spec, { ...opts, takeFrom: source, timeoutMs: 5_000 });
  }

  /**
   * Before an HA VM boots here: the cluster's record must not give it to another node (it would
   * run twice; only a move or an HA restart changes where an HA VM runs). Without an answer from
   * etcd that cannot be known, so the start is refused.
   */
  async mayBoot(spec: VmSpec, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const store = this.member?.store;
    if (!spec.ha || !store) return;
    const what = `start HA VM '${spec.name}' on host '${this.d.name}'`;
    const key = K.vms.key(spec.name);
    const raw = await store.get(key, { ...opts, timeoutMs: 5_000 }).catch((err: unknown) => {
      throw new FerryError(
        'E_CLUSTER_UNAVAILABLE',
        `Cannot ${what}: the cluster's record of it cannot be read (${messageOf(err)}), so it may run on ` +
          'another node; try again when etcd answers',
        { cause: err, context: { vm: spec.name } },
      );
    });
    // A record that does not parse is replaced once the VM runs, as putHaRecord does.
    const cur = raw === null ? null : K.vms.decode(key, raw);
    if (cur?.ok && cur.value.owner !== this.d.name)
      throw new FerryError(
        'E_HA_OWNED_ELSEWHERE',
        `Cannot ${what}: the cluster runs it on host '${cur.value.owner}' (generation ` +
          `${String(cur.value.generation)}); start or stop it there, or move it here with ` +
          `'ferry move-vm ${spec.name} --to ${this.d.name}'`,
        { context: { vm: spec.name, owner: cur.value.owner } },
      );
  }

  /**
   * A stopped VM's spec changed (vm set): a record the cluster still keeps of it gets the new
   * spec (and its generation); none is made, since a stopped VM is not restarted elsewhere.
   */
  async specChanged(spec: VmSpec): Promise<void> {
    const store = this.member?.store;
    if (!spec.ha || !store) return;
    const cur = await K.readOne(store, K.vms, spec.name).catch(() => null);
    if (!cur || cur.value.owner !== this.d.name) return;
    await this.putOwnRecord(store, spec);
  }

  /** Its guest powered the VM off here: stopped on purpose, as by `vm stop`. */
  guestStopped(name: string): Promise<void> {
    return this.forgetVm(name);
  }

  /**
   * The VM's record goes (stopped on purpose, removed, or gone from the cluster): no node
   * restarts it. Only a record naming this node, or one that does not parse: one a leader gave
   * to another node is that node's, which runs the VM (errors become cluster.error events).
   */
  async forgetVm(name: string): Promise<void> {
    const store = this.member?.store;
    if (!store) return;
    try {
      const key = K.vms.key(name);
      const raw = await store.get(key);
      if (raw === null) return;
      const d = K.vms.decode(key, raw);
      if (d.ok && d.value.owner !== this.d.name) return;
      await store.txn({ compare: [{ key, value: raw }], success: [{ type: 'delete', key }] });
    } catch (err) {
      this.d.events.emit('cluster.error', { vm: name, message: `cannot forget its HA record: ${messageOf(err)}` });
    }
  }

  /**
   * `ferry cluster add-vm`: the VM becomes clustered (HA) with this policy. Its files must be
   * on shared storage, or no other node could restart it. Asking again updates the policy.
   */
  addVm(name: string, policy: Partial<ClusterPolicy>): Promise<VmView> {
    const m = this.need(`add VM '${name}' to a cluster`);
    m.need(`add VM '${name}' to the cluster`);
    return this.d.vms.configure(name, async (spec) => {
      assertHaStorage(
        haFiles(spec),
        this.d.pools(),
        `add VM '${name}' to cluster '${m.name}'`,
        `move it to a shared pool first ('ferry move-storage ${name} --path ${sharedPoolHint(this.d.pools())}')`,
        name,
      );
      spec.ha = true;
      spec.cluster = {
        ...DEFAULT_POLICY,
        ...(spec.cluster ?? {}),
        ...definedFields(policy),
      };
      await saveVm(spec);
      if (this.d.vms.isRunning(name)) await this.recordHa(spec);
      this.d.events.emit('vm.changed', { vm: name, ha: true });
    });
  }

  /** `ferry cluster remove-vm`: the VM stays where it is, no longer highly available. */
  removeVm(name: string): Promise<VmView> {
    const m = this.need(`remove VM '${name}' from a cluster`);
    const store = m.need(`remove VM '${name}' from the cluster`);
    return this.d.vms.configure(name, async (spec) => {
      if (!spec.ha)
        throw new FerryError(
          'E_NOT_CLUSTERED',
          `Cannot remove VM '${name}' from cluster '${m.name}': it is not clustered`,
          {},
        );
      // The record goes first: once it is gone, no leader restarts the VM elsewhere.
      await store.delete(K.vms.key(name));
      spec.ha = false;
      delete spec.cluster;
      await saveVm(spec);
      this.d.events.emit('vm.changed', { vm: name, ha: false });
    });
  }

  /** HA restart decided by the leader: register the VM here (its files are shared) and boot it. */
  async haStart(specIn: unknown, generation: number): Promise<void> {
    const asked = parseVmSpec(specIn, 'restart the HA VM');
    // A peer's word is not enough: only the cluster's record (which only a leader may write)
    // gives a VM to this node, under this generation. The spec run is the record's.
    const what = `restart HA VM '${asked.name}'`;
    const key = K.vms.key(asked.name);
    const store = this.need(what).need(what);
    const raw = await store.get(key);
    const rec = raw === null ? null : K.vms.decode(key, raw);
    if (!rec?.ok || rec.value.owner !== this.d.name || rec.value.generation !== generation || rec.value.id !== asked.id)
      throw new FerryError(
        'E_FORBIDDEN',
        `Cannot ${what} on host '${this.d.name}': the cluster's record does not give it to this host ` +
          `under generation ${String(generation)}; only a leader's decision starts an HA VM`,
      );
    const spec = parseVmSpec(rec.value.spec, what);
    await testHold('ha-start', () => undefined);
    if (testFault('ha-start-refuse'))
      throw new FerryError('E_QEMU_START', `Cannot ${what} on host '${this.d.name}': refused by a test hook`);
    await this.d.vms.haStart(spec);
    // The leader gives the VM to another node only once this one answered that it did not start
    // it; read again anyway, and never keep a guest whose record went elsewhere meanwhile.
    const now = await K.readOne(store, K.vms, spec.name).catch(() => null);
    if (now && (now.value.owner !== this.d.name || now.value.generation !== generation)) {
      await this.d.vms.kill(spec.name);
      throw new FerryError(
        'E_HA_OWNED_ELSEWHERE',
        `Cannot ${what} on host '${this.d.name}': while it started, the cluster gave it to host ` +
          `'${now.value.owner}' (generation ${String(now.value.generation)}); it was stopped here`,
        { context: { vm: spec.name, owner: now.value.owner } },
      );
    }
    this.d.events.emit('vm.ha-started', { vm: spec.name, generation });
  }

  /** Self-fence: stop every HA VM here at once (the cluster will run them elsewhere). */
  async fence(): Promise<void> {
    // All at once: the lease is about to expire and the cluster to restart them elsewhere.
    await Promise.all(
      this.d.vms.registered().map(async (rec) => {
        if (!this.d.vms.isRunning(rec.name)) return;
        const spec = await this.specOf(rec.configPath);
        if (!spec?.ha) return;
        if (!(await this.d.vms.kill(rec.name))) return;
        this.fenced.add(rec.name);
        this.d.events.emit('vm.fenced', { vm: rec.name });
      }),
    );
  }

  /** Before (re)announcing the node: HA VMs the cluster now gives to another node are forgotten here. */
  async forgetGivenAway(): Promise<void> {
    await this.eachHaVm(async (name, _spec, ha) => {
      if (ha.kind === 'record' && ha.record.owner !== this.d.name)
        await this.d.vms.forget(name, `HA: now owned by ${ha.record.owner}`);
    });
  }

  /**
   * After (re)joining: HA VMs the cluster now gives to another node are forgotten here (their
   * files stay: they are the VM's, on shared storage), and stopped if somehow running.
   */
  async reconcile(): Promise<void> {
    await this.eachHaVm(async (name, spec, ha, store) => {
      if (ha.kind === 'bad') {
        // A record that does not read back is reported, never guessed at.
        this.member?.onBad(ha.bad);
        return;
      }
      if (ha.kind === 'record' && ha.record.owner !== this.d.name) {
        await this.d.vms.forget(name, `HA: now owned by ${ha.record.owner}`);
      } else if (ha.kind === 'none') {
        // A running HA VM the cluster lost track of (a deliberately stopped one has no record).
        if (this.d.vms.isRunning(name)) await this.recordHa(spec);
      } else if (this.fenced.has(name) && !this.d.vms.isRunning(name)) {
        await this.restartFenced(store, name, ha.raw, ha.record);
      }
      this.fenced.delete(name);
    });
  }

  /** Each HA VM registered here with the cluster's record of it (read errors count as no record). */
  private async eachHaVm(
    fn: (name: string, spec: VmSpec, ha: HaRecordRead, store: ClusterStore) => Promise<void>,
  ): Promise<void> {
    const store = this.member?.store;
    if (!store) return;
    for (const rec of this.d.vms.registered()) {
      const spec = await this.specOf(rec.configPath);
      if (!spec?.ha) continue;
      const key = K.vms.key(spec.name);
      const raw = await store.get(key).catch(() => null);
      const decoded = raw === null ? null : K.vms.decode(key, raw);
      const ha: HaRecordRead =
        raw === null || !decoded
          ? { kind: 'none' }
          : decoded.ok
            ? { kind: 'record', raw, record: decoded.value }
            : { kind: 'bad', bad: decoded.bad };
      await fn(rec.name, spec, ha, store);
    }
  }

  /**
   * Fenced, but the cluster did not give the VM to another node (we were back before our
   * lease expired): run it here again, claiming it with a new fencing generation.
   */
  private restartFenced(store: ClusterStore, name: string, raw: string, record: HaRecord): Promise<void> {
    return this.claimAndStart(store, name, raw, record, 'restarted after self-fence');
  }

  /**
   * An HA VM's QEMU died on its own here (a crash, the OOM killer): restarted here, as Hyper-V
   * restarts a failed VM on its node, once per CRASH_WINDOW_MS and only while this node is up; a
   * second death within the window leaves it stopped, said. Claimed under a new generation
   * first, so a leader failing this node over cannot also run it.
   */
  async crashed(name: string): Promise<void> {
    // A moment first: an agent that was hung (its QEMUs killed by the host's fence) learns that it
    // lost its lease from its timers, which may run after the exit it is told of on waking.
    await sleep(1000);
    const store = this.member?.store;
    // Started again meanwhile (`vm start`, which checked the record first): nothing to restart.
    if (!store || !this.member?.up || this.d.vms.isRunning(name)) return;
    const rec = this.d.vms.registered().find((r) => r.name === name);
    const spec = rec ? await this.specOf(rec.configPath) : null;
    if (!spec?.ha) return;
    const last = this.crashRestarts.get(name);
    if (last !== undefined && Date.now() - last < CRASH_WINDOW_MS) {
      this.d.events.emit('cluster.error', {
        vm: name,
        message:
          `its QEMU exited on its own again within ${CRASH_WINDOW_MS / 60_000} min of its restart here: left ` +
          `stopped; see why in ${path.join(this.d.dataDir, 'run', spec.id, 'qemu.stderr.log')} and its ` +
          `console, then run 'ferry vm start ${name}'`,
      });
      return;
    }
    const cur = await K.readOne(store, K.vms, name).catch(() => null);
    if (!cur || cur.value.owner !== this.d.name) return;
    this.crashRestarts.set(name, Date.now());
    await this.claimAndStart(store, name, cur.raw, cur.value, 'restarted after its QEMU exited on its own');
  }

  /** Claims the VM's record under a new generation (compare-and-swap on `raw`), then boots it here. */
  private async claimAndStart(
    store: ClusterStore,
    name: string,
    raw: string,
    record: HaRecord,
    reason: string,
  ): Promise<void> {
    const next = { ...record, generation: record.generation + 1 };
    const claimed = await store
      .txn({
        compare: [{ key: K.vms.key(name), value: raw }],
        success: [{ type: 'put', key: K.vms.key(name), value: K.vms.encode(next) }],
      })
      .catch(() => false);
    if (!claimed) return;
    try {
      await this.d.vms.start(name);
    } catch (err) {
      this.d.events.emit('cluster.error', { vm: name, message: `cannot start it (${reason}): ${messageOf(err)}` });
      return;
    }
    // As after an HA start: no guest whose record went elsewhere meanwhile, nor on a node that
    // lost its lease during the boot (its fence may have run before this QEMU was there to kill).
    const now = await K.readOne(store, K.vms, name).catch(() => null);
    if (!this.member?.up || (now && (now.value.owner !== this.d.name || now.value.generation !== next.generation))) {
      await this.d.vms.kill(name);
      this.d.events.emit('cluster.error', {
        vm: name,
        message: `stopped again (${reason}): the node lost its lease, or the cluster gave the VM elsewhere, meanwhile`,
      });
      return;
    }
    this.d.events.emit('vm.ha-started', { vm: name, generation: next.generation, reason });
  }

  private specOf(configPath: string): Promise<VmSpec | null> {
    return loadVm(configPath).catch(() => null);
  }

  // ---- what a move needs ----

  /** Joined: the store and the queue are there. */
  get joined(): boolean {
    return !!this.member?.store && !!this.member.queue;
  }

  get name(): string {
    return this.need('use the cluster').name;
  }

  /** Is `node` a member of this cluster? (Errors from etcd propagate.) */
  async isMember(node: string): Promise<boolean> {
    return (await this.need('read the cluster').need('read the cluster').get(K.members.key(node))) !== null;
  }

  /** Is `node` paused (drained): it takes no VMs. (Errors from etcd propagate.) */
  async isPaused(node: string): Promise<boolean> {
    return (await this.need('read the cluster').need('read the cluster').get(K.paused.key(node))) !== null;
  }

  /** Waits in the cluster-wide queue until the leader admits the move. */
  enterQueue(
    item: { id: string; vm: string; from: string; to: string; priority: Priority; batch?: string },
    opts: { signal: AbortSignal; onPosition: (position: number | null) => void },
  ): Promise<void> {
    return this.queue('queue a move').enter(item, opts);
  }

  leaveQueue(id: string): Promise<void> {
    return this.queue('leave the queue').leave(id);
  }

  position(id: string): number | null {
    return this.member?.queue?.position(id) ?? null;
  }

  private queue(what: string): NonNullable<Membership['queue']> {
    const q = this.need(what).queue;
    if (!q)
      throw new FerryError(
        'E_CLUSTER_UNAVAILABLE',
        `Cannot ${what}: this agent is not connected to its cluster yet; wait a few seconds and retry`,
      );
    return q;
  }
}
