// High availability: every clustered (HA) VM has a record in etcd naming its owner node and
// a fencing generation. One agent, elected leader through etcd, watches the nodes; when a
// node's lease expires it restarts that node's HA VMs on the other nodes (cold boot from
// shared storage), each decision an etcd transaction that bumps the generation, so a new
// leader never acts twice. An agent that loses its own lease stops its HA VMs (self-fence);
// QEMU's image locks are the last guard.
import type { Emit } from '../api/events.js';
import { AgentClient } from '../api/client.js';
import { peerActions } from '../api/peer-actions.js';
import { FerryError, messageOf } from '../errors.js';
import { sleep } from '../util/exec.js';
import type { ClusterStore, Leadership } from './store.js';
import type { EventBus } from '../events/bus.js';
import { Scheduler } from './queue.js';
import { AdaptiveConcurrency } from './adaptive.js';
import { BatchRunner } from './batches.js';
import { FailbackRunner } from './failback-runner.js';
import { placementNodes } from './context.js';
import { place, whyNot } from './placement.js';
import { parseVmSpec } from '../vm/spec.js';
import * as K from './keys.js';
import { mayLead, policyOf, type HaRecord } from './model.js';
import { readNodes, swapHaRecord } from './records.js';
import { withAway } from './failback.js';
import { BEAT_PERIOD_MS, BeatTracker, beatOf } from './beats.js';

export { putHaRecord } from './records.js';
export type { HaRecord } from './model.js';

/** How often the leader looks again for HA VMs owned by a node that is down (a backstop: the watch acts at once). */
const HA_SWEEP_MS = 5000;
/**
 * The leader's election lease: as short as a node's (membership.ts NODE_TTL_S), so that when
 * the leader's host dies, its successor is elected about when the dead node's lease expires.
 */
const LEADER_TTL_S = 4;
/**
 * How long the leader waits for a node to boot an HA VM it gave it. Tests shorten it
 * (FERRY_TEST_HA_START_TIMEOUT_MS) to see a node that does not answer in time.
 */
const HA_START_TIMEOUT_MS = Number(process.env.FERRY_TEST_HA_START_TIMEOUT_MS) || 60_000;

export interface HaHost {
  name: string;
  tls: { ca: string; cert: string; key: string };
  events: EventBus;
}

/** Runs for the life of the agent: campaign, and while leader, fail VMs over, schedule the queue and run drains. */
export class HaMonitor {
  private leadership: Leadership | null = null;
  private stopWatch: (() => Promise<void>) | null = null;
  private ac = new AbortController();
  private busy = Promise.resolve();
  /** The leader's services while this agent leads (for metrics and the benchmark). */
  current: { scheduler: Scheduler; batches: BatchRunner } | null = null;
  private readonly emit: Emit;
  private readonly onBad: K.OnBad;
  /** The last refusal said of each VM (and node it was given to), by say(). */
  private readonly refused = new Map<string, string>();
  /** VMs whose `ha-start` is being asked now (a pass does not ask again meanwhile). */
  private readonly asking = new Set<string>();
  /** Nodes whose lease lives but whose beat stood still for the window: down for fail-over (beats.ts). */
  private stale = new Set<string>();

  constructor(
    private store: ClusterStore,
    private host: HaHost,
  ) {
    this.emit = (type, fields) => {
      host.events.emit(type, fields);
    };
    this.onBad = (bad) => {
      host.events.emit('cluster.bad-value', bad);
    };
  }

  start(): void {
    void this.campaignLoop();
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.stopWatch?.().catch(() => undefined);
  }

  private async campaignLoop(): Promise<void> {
    // A leader whose beat stands still loses its election key (another host may keep its lease).
    // The same sightings serve this node once it leads: a dead leader's node is then already
    // counted out, not a whole window after the new leader's first read.
    const leaderBeats = new BeatTracker();
    let deposing = false;
    const depose = setInterval(() => {
      if (deposing || this.ac.signal.aborted) return;
      deposing = true;
      void this.deposeStaleLeader(leaderBeats)
        .catch(() => undefined) // not eligible (etcd refuses), or unreachable: the next read counts
        .finally(() => (deposing = false));
    }, BEAT_PERIOD_MS);
    this.ac.signal.addEventListener('abort', () => clearInterval(depose), { once: true });
    while (!this.ac.signal.aborted) {
      try {
        await this.untilEligible();
        const leadership = await this.store.campaign(K.election.name, this.host.name, {
          signal: this.ac.signal,
          ttlSeconds: LEADER_TTL_S,
        });
        try {
          await this.lead(leadership, leaderBeats);
        } catch (err) {
          // A leader that could not set itself up gives the key up: kept alive, it would hold
          // every candidate (this node's next campaign too) behind a leader that does nothing.
          await leadership.resign({ timeoutMs: 2000 }).catch(() => undefined);
          throw err;
        }
      } catch {
        // Lost, or etcd unreachable: campaign again shortly (ends at once when stopping).
        await sleep(1000, this.ac.signal).catch(() => undefined);
      }
    }
  }

  /**
   * Waits until the administrator lets this node lead (leaders/<node>): etcd would refuse its
   * campaign and its decisions otherwise. Taking that away also deletes its election key, which
   * ends a leadership at once (the campaign loop then waits here again).
   */
  private async untilEligible(): Promise<void> {
    for (;;) {
      const leaders = new Set((await K.readAll(this.store, K.leaders, this.onBad)).keys());
      if (mayLead({ leaders }, this.host.name)) return;
      await sleep(2000, this.ac.signal);
    }
  }

  /**
   * While `leadership` holds: fail dead nodes' VMs over, schedule the queue, run the drains and
   * fail-backs. `beats`: this node's sightings of the beats so far (beats.ts: any observer's count).
   */
  private async lead(leadership: Leadership, beats: BeatTracker): Promise<void> {
    this.leadership = leadership;
    this.emit('cluster.leader', { node: this.host.name });
    const lost = new Promise<void>((resolve) => {
      leadership.onLost(() => {
        resolve();
      });
    });
    // Learnt afresh by each leader: how many moves a node's link and CPUs carry at once.
    const adaptive = new AdaptiveConcurrency();
    const scheduler = new Scheduler(this.store, leadership, this.emit, adaptive);
    const batches = new BatchRunner(
      { store: this.store, self: this.host.name, tls: this.host.tls, onBad: this.onBad },
      leadership,
      this.emit,
      { model: adaptive, changed: () => void scheduler.pass() },
    );
    const failback = new FailbackRunner(
      { store: this.store, self: this.host.name, tls: this.host.tls, onBad: this.onBad },
      leadership,
      this.emit,
      (node) => this.stale.has(node),
    );
    const timers: NodeJS.Timeout[] = [];
    let stopWatch: (() => Promise<void>) | null = null;
    try {
      this.current = { scheduler, batches };
      stopWatch = this.stopWatch = await this.store.watchPrefix(K.nodes.prefix, (ev) => {
        const dead = ev.type === 'delete' ? K.nodes.nameOf(ev.key) : null;
        if (dead !== null) this.queue(() => this.failover(dead));
        void scheduler.pass();
        void batches.pass();
      });
      // Nodes that died while nobody was leader.
      this.queue(() => this.sweep());
      // Beats, counted from when this node first saw each (also before it led).
      this.stale = new Set();
      let reading = false;
      timers.push(
        setInterval(() => {
          if (reading) return;
          reading = true;
          void this.checkBeats(beats)
            .catch(() => undefined) // etcd unreachable: nothing is learnt, the next read counts
            .finally(() => (reading = false));
        }, BEAT_PERIOD_MS / 2),
      );
      // And again now and then: a watch event lost (its etcd member died with the node), or a
      // fail-over that failed half-way (etcd unreachable for a moment), must not leave an HA VM
      // down until the next leader. Two range reads on the leader only.
      timers.push(
        setInterval(() => {
          this.queue(() => this.sweep());
        }, HA_SWEEP_MS),
      );
      // Each service must be running: one whose watch could not be set up (etcd slow to answer)
      // would otherwise leave a leader that never schedules, drains or fails back. All settle
      // before any is stopped, so no watch is set up after its stop.
      const started = await Promise.allSettled([scheduler.start(), batches.start(), failback.start()]);
      const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      await Promise.race([
        lost,
        new Promise<void>((resolve) => {
          this.ac.signal.addEventListener(
            'abort',
            () => {
              resolve();
            },
            { once: true },
          );
        }),
      ]);
    } catch (err) {
      if (!this.ac.signal.aborted && !leadership.lost)
        this.emit('cluster.error', {
          message: `Cannot lead the cluster: ${messageOf(err)}; this node gives leadership up and campaigns again`,
        });
      throw err;
    } finally {
      for (const t of timers) clearInterval(t);
      this.stale = new Set();
      this.current = null;
      await Promise.all([scheduler.stop(), batches.stop(), failback.stop()]);
      await stopWatch?.().catch(() => undefined);
    }
  }

  /** One fail-over pass at a time; a failed one is said (an event), the next sweep tries again. */
  private queue(pass: () => Promise<void>): void {
    this.busy = this.busy.then(pass).catch((err: unknown) => {
      if (!this.ac.signal.aborted && !this.leadership?.lost)
        this.emit('cluster.error', { message: `Cannot fail VMs over: ${messageOf(err)}; the leader tries again` });
    });
  }

  private async sweep(): Promise<void> {
    const up = await K.readAll(this.store, K.nodes, this.onBad);
    const vms = await K.readAll(this.store, K.vms, this.onBad);
    const owners = new Set([...vms.values()].map((e) => e.value.owner));
    for (const o of owners) if (!up.has(o) || this.stale.has(o)) await this.failover(o);
    // Restarts the owner has not confirmed (by booting the VM, which rewrites the record): it
    // may not have answered, so it is asked again while up; were it down, its VMs fail over
    // above as any down node's, its fence having stopped them. Kept in the record, so a new
    // leader asks too.
    for (const [name, cur] of vms) {
      const { owner, restartFrom: from } = cur.value;
      const node = up.get(owner);
      if (from === undefined || !node || this.stale.has(owner) || this.asking.has(name)) continue;
      // Not awaited: a node that hangs must not hold up the next passes.
      void this.askStart(cur, owner, node.value.endpoint, from, { quiet: true }).then((answer) => {
        if (answer === 'refused') this.queue(() => this.failover(from, { vm: name, by: owner }));
      });
    }
  }

  /**
   * While another node leads: when its beat stood still for the window (beats.ts), delete its
   * election key, as if its election lease had expired — which a hostile host can stop by keeping
   * that lease alive. Its decisions are fenced by that key (swapHaRecord), so they end with it,
   * and a node without beats has fenced its own HA VMs by then. Only leader-eligible nodes may.
   */
  private async deposeStaleLeader(beats: BeatTracker): Promise<void> {
    if (this.leadership && !this.leadership.lost) return;
    const sentAt = Date.now();
    const members = await K.readAll(this.store, K.members, this.onBad);
    const stale = new Set(
      beats.observe(new Map([...members].map(([name, e]) => [name, beatOf(e.value)])), sentAt, Date.now()),
    );
    stale.delete(this.host.name);
    if (!stale.size) return;
    const held = await this.store.getPrefix(`${K.election.prefix}${K.election.name}/`);
    for (const [key, holder] of Object.entries(held)) {
      if (!stale.has(holder)) continue;
      if (await this.store.txn({ compare: [{ key, value: holder }], success: [{ type: 'delete', key }] }))
        this.emit('cluster.node-stale', { node: holder, silentMs: beats.silentMs(holder, Date.now()) ?? 0 });
    }
  }

  /**
   * One read of the member keys: a node whose lease lives (its node key is there) but whose beat
   * stood still for the window is down, as if its lease had expired — another host may be keeping
   * that lease alive (beats.ts). A stale node's beat moving again makes it up again.
   */
  private async checkBeats(beats: BeatTracker): Promise<void> {
    const sentAt = Date.now();
    const members = await K.readAll(this.store, K.members, this.onBad);
    const seen = new Map([...members].map(([name, e]) => [name, beatOf(e.value)]));
    const stale = beats.observe(seen, sentAt, Date.now());
    const up = stale.length ? await K.readAll(this.store, K.nodes, this.onBad) : new Map();
    const now = new Set(stale.filter((n) => up.has(n)));
    for (const n of now)
      if (!this.stale.has(n)) {
        this.emit('cluster.node-stale', { node: n, silentMs: beats.silentMs(n, Date.now()) ?? 0 });
        this.queue(() => this.failover(n));
      }
    this.stale = now;
  }

  /**
   * Restarts the HA VMs of a node that is down on the nodes that are up and not paused: placed
   * high priority first, where memory fits, keeping anti-affinity classes apart when possible,
   * then all started at once.
   */
  private async failover(dead: string, refused?: { vm: string; by: string }): Promise<void> {
    const leadership = this.leadership;
    if (!leadership || leadership.lost) return;
    const read = await readNodes(this.store, this.onBad);
    // A node whose beat stands still is down whatever its lease says: never a target either.
    const nodes = { ...read, up: Object.fromEntries(Object.entries(read.up).filter(([n]) => !this.stale.has(n))) };
    if (!refused && nodes.up[dead]) return; // it came back
    const all = [...(await K.readAll(this.store, K.vms, this.onBad)).values()];
    // `refused`: the node the VM was given to answered, late, that it did not start it.
    const owner = refused?.by ?? dead;
    const vms = all.filter((e) => e.value.owner === owner && (!refused || e.name === refused.vm));
    if (!vms.length) return;
    const ctx = { store: this.store, self: this.host.name, tls: this.host.tls, onBad: this.onBad };
    const pnodes = await placementNodes(ctx, nodes);
    // Only a node that may lead can keep an HA VM's record (a cluster decision).
    const barred = Object.keys(nodes.members).filter((n) => !mayLead(nodes, n));
    const plan = place(
      pnodes,
      all
        .filter((e) => !vms.includes(e))
        .map(({ value: r }) => ({ vm: r.name, node: r.owner, antiAffinity: policyOf(r.spec).antiAffinity })),
      vms.map(({ value: r }) => ({
        name: r.name,
        memoryMiB: r.memoryMiB,
        ...policyOf(r.spec),
        exclude: [dead, owner, ...barred],
        smartPaging: smartPagingOf(r.spec),
      })),
    );
    // All at once: each VM is its own decision (its own record and generation), and the
    // last of several must not wait for the boots of the others.
    await Promise.all(
      plan.map(async (p) => {
        const entry = vms.find((e) => e.name === p.vm);
        if (!entry) return;
        if (!p.to) {
          const why = whyNot(read, this.stale, barred, pnodes, dead);
          this.say({ vm: entry.name, from: dead, result: `cannot restart: ${p.reason ?? 'no node'} (${why})` });
          return;
        }
        await this.restart(leadership, entry, [dead, owner, ...barred], p.to, nodes, pnodes);
      }),
    );
  }

  /** Restarts one VM on `to`, or on the next candidate when a node cannot start it (its agent fails, a lock…). */
  private async restart(
    leadership: Leadership,
    first: K.Entry<HaRecord>,
    exclude: string[],
    firstTo: string,
    nodes: Awaited<ReturnType<typeof readNodes>>,
    pnodes: Awaited<ReturnType<typeof placementNodes>>,
  ): Promise<void> {
    let cur = first;
    let to: string | null = firstTo;
    const [dead = ''] = exclude;
    const tried = [...exclude];
    const pol = policyOf(cur.value.spec);
    while (to) {
      const endpoint = nodes.up[to]?.endpoint;
      if (!endpoint) break;
      // Restarted off its dead home: marked away in the same write, for fail-back (failback.ts).
      const home = pol.preferredOwners[0];
      const away = to === cur.value.away ? undefined : dead && dead === home ? dead : cur.value.away;
      const next: HaRecord = {
        ...withAway(cur.value, away),
        owner: to,
        generation: cur.value.generation + 1,
        restartFrom: dead,
      };
      // Decide only while still leader, and only if nobody changed the VM's record meanwhile.
      const fence = { key: leadership.key, value: this.host.name };
      if (!(await swapHaRecord(this.store, cur, next, fence))) return;
      cur = { ...cur, raw: K.vms.encode(next), value: next };
      const answer = await this.askStart(cur, to, endpoint, dead);
      if (answer !== 'refused') return;
      tried.push(to);
      const again = place(
        pnodes,
        [],
        [
          {
            name: cur.name,
            memoryMiB: cur.value.memoryMiB,
            ...pol,
            antiAffinity: [],
            exclude: tried,
            smartPaging: smartPagingOf(cur.value.spec),
          },
        ],
      );
      to = again[0]?.to ?? null;
    }
    // Every node it was given to refused: back to the down node it came from (a new generation),
    // so the next pass (this leader's or the next one's) tries again, rather than the record
    // naming a node that does not run it, which no pass would look at.
    if (cur !== first && !nodes.up[dead]) {
      const back: HaRecord = {
        ...withAway(cur.value, first.value.away),
        owner: dead,
        generation: cur.value.generation + 1,
      };
      delete back.restartFrom;
      const refusedBy = tried.filter((n) => !exclude.includes(n)).join(', ');
      if (await swapHaRecord(this.store, cur, back, { key: leadership.key, value: this.host.name }))
        this.say({
          vm: cur.name,
          from: dead,
          result: `cannot restart: every node refused (${refusedBy}); tried again every ${HA_SWEEP_MS / 1000} s`,
        });
    }
  }

  /**
   * An HA refusal said once per VM and node, and again when its text changes: the passes ask
   * again every 5 s.
   */
  private say(fields: { vm: string; from: string; to?: string; generation?: number; result?: string; error?: string }) {
    const key = `${fields.vm}\0${fields.to ?? ''}`;
    const text = fields.result ?? fields.error ?? '';
    if (this.refused.get(key) === text) return;
    this.refused.set(key, text);
    this.emit('cluster.ha', fields);
  }

  /**
   * Asks `to` to boot the VM its record now gives it. 'refused': the node answered that it did
   * not (it never keeps a guest it failed to start), so another node may be tried. 'unanswered':
   * it may be booting it, so no other node may, until it answers or is found down.
   */
  private async askStart(
    cur: K.Entry<HaRecord>,
    to: string,
    endpoint: string,
    dead: string,
    opts: { quiet?: boolean } = {},
  ): Promise<'started' | 'refused' | 'unanswered'> {
    const { generation } = cur.value;
    this.asking.add(cur.name);
    const client = new AgentClient({ endpoint, host: to, credentials: this.host.tls });
    try {
      await client.call(
        peerActions.haStart,
        {
          body: {
            // The peer protocol checks the whole spec; a bad one fails this attempt here, named.
            spec: parseVmSpec(cur.value.spec, `restart VM '${cur.name}' on '${to}'`),
            generation,
            from: dead,
          },
        },
        { timeoutMs: HA_START_TIMEOUT_MS },
      );
      this.emit('cluster.ha', {
        vm: cur.name,
        from: dead,
        to,
        generation,
        priority: policyOf(cur.value.spec).priority,
      });
      for (const k of [...this.refused.keys()]) if (k.startsWith(`${cur.name}\0`)) this.refused.delete(k);
      await this.confirmed(cur.name, to, generation);
      return 'started';
    } catch (err) {
      const answered = peerRefused(err);
      const error = answered ? messageOf(err) : `${messageOf(err)}; it stays given to ${to}, which is asked again`;
      // Asked again each pass: an unanswered ask is said once, when it first happened.
      if (answered) this.say({ vm: cur.name, from: dead, to, generation, error });
      else if (!opts.quiet) this.emit('cluster.ha', { vm: cur.name, from: dead, to, generation, error });
      return answered ? 'refused' : 'unanswered';
    } finally {
      client.close();
      this.asking.delete(cur.name);
    }
  }

  /**
   * The owner said it runs the VM: its restart is no longer pending. Its boot rewrote the
   * record already (dropping `restartFrom`); this covers a boot whose write failed.
   */
  private async confirmed(vm: string, owner: string, generation: number): Promise<void> {
    const leadership = this.leadership;
    if (!leadership || leadership.lost) return;
    const cur = await K.readOne(this.store, K.vms, vm).catch(() => null);
    if (!cur || cur.value.owner !== owner || cur.value.generation !== generation || !cur.value.restartFrom) return;
    const next = { ...cur.value };
    delete next.restartFrom;
    await swapHaRecord(this.store, cur, next, { key: leadership.key, value: this.host.name }).catch(() => false);
  }
}

/** Answers that do not say the node will not run the VM: it may still be booting it. */
const UNSURE = new Set(['E_INTERNAL', 'E_HTTP', 'E_TIMEOUT', 'E_VM_BUSY']);

/**
 * Did the peer refuse (an HTTP error with a Ferry code: it never keeps a guest it failed to
 * start)? A timeout, a broken connection, an internal error, or "busy" (an earlier ask of the
 * same restart still boots it) say nothing of whether its QEMU runs.
 */
export function peerRefused(err: unknown): boolean {
  if (!(err instanceof FerryError)) return false;
  return typeof err.context.status === 'number' && !UNSURE.has(err.code);
}

/** Does the VM of this record allow Smart Paging (its spec says so)? */
function smartPagingOf(spec: unknown): boolean {
  return typeof spec === 'object' && spec !== null && (spec as { smartPaging?: unknown }).smartPaging === true;
}
