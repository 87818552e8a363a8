// The fence: a small process per host, apart from the agent (Proxmox's watchdog-mux plays this
// part), so that a host whose agent died, hung or was cut off never keeps running an HA VM the
// cluster is about to restart elsewhere. QEMU runs detached and survives its agent; without
// the fence only QEMU's image lock would stop a second copy.
//
// The agent (its Membership) writes DATA/run/cluster-liveness.json each time its node lease
// is renewed: the lease, when the last successful keepalive was sent, and the fence margin.
// `ferry fence --data DATA` (started by the agent, detached, one per data folder) reads it
// every 100 ms; when the lease has not been renewed for the margin (3 s of a 4 s lease, as
// the agent's own self-fence) it kills, at once, the QEMU of every VM the cluster records as
// this node's HA VM (read from etcd with the host's certificate while it can, the last list
// otherwise), and notes them in DATA/run/fence-report.json so that the agent, back in time,
// runs them again. While the lease is renewed it never kills anything.
//
// An agent restart (systemctl restart, a crash and Restart=on-failure) must not cost the
// host its HA VMs: while the agent's process is gone (not merely hung: a stopped or wedged
// agent still holds its pid and is fenced as above) and etcd answers, the fence keeps the
// agent's node lease alive itself (one keepalive every TTL/3 or 500 ms, as the agent, from its own connection), for at
// most a grace window (Liveness.graceMs, 60 s by default), and counts its own successful
// keepalives as renewals. It stops as soon as a new agent writes another lease (the old one
// then expires by itself) or the agent renews again; if it cannot renew (a partition) or the
// grace ends, the margin runs out and it fences, before etcd can expire the lease.
//
// Beats (beats.ts): the agent's "last renewal" is the older of its last keepalive and its last
// beat, so the fence also fences a node that cannot write its beat; while keeping a gone agent's
// lease it writes the beats as well (the leader counts a node without them down).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as z from 'zod';
import { cliCommand } from '../../guest/paths.js';
import { isQemuAlive } from '../qemu/process.js';
import { FerryError, messageOf } from '../errors.js';
import { sleep } from '../util/exec.js';
import { EtcdStore, keepalivePeriodMs, type ClusterStore } from './store.js';
import * as K from './keys.js';
import { BEAT_WINDOW_MS, beatLossMs, nextBeat, renewedAt } from './beats.js';

/** How long the fence keeps a gone agent's lease by default: room for a restart, not for an outage. */
export const DEFAULT_GRACE_MS = 60_000; // as long as Proxmox's watchdog waits for its HA manager

export const Liveness = z.object({
  version: z.literal(1),
  node: z.string().min(1),
  cluster: z.string().min(1),
  endpoints: z.array(z.string()).min(1),
  tls: z.object({ ca: z.string(), cert: z.string(), key: z.string() }),
  /** The node lease the agent renews. */
  leaseId: z.string(),
  ttlMs: z.number().int().positive(),
  /** Not renewed for this long: fence (the agent's own self-fence margin). */
  lossAfterMs: z.number().int().positive(),
  /** When the grant, then the last successful keepalive, was sent (ms since the epoch). */
  renewedAt: z.number(),
  agentPid: z.number().int(),
  /**
   * How long the fence keeps the lease of an agent whose process is gone, or bridges a running
   * one's late renewals (0: never).
   */
  graceMs: z.number().int().nonnegative().default(DEFAULT_GRACE_MS),
  /**
   * The node's member record: while the fence keeps the lease it also writes the node's beats
   * (beats.ts), which the leader needs as well. Absent (an agent before beats): keepalives only.
   */
  member: z.object({ endpoint: z.string(), joinedAt: z.string().optional() }).optional(),
  /** The agent gave this lease up (it fenced itself and will join with another): never kept for it. */
  released: z.boolean().optional(),
});
export type Liveness = z.infer<typeof Liveness>;

/**
 * A running agent whose renewals are this late (half the margin) is bridged: the fence renews its
 * lease too, until the agent's next renewal lands. A busy host delays the agent's renewals (it runs
 * below its guests, Nice=5, and a burst of its own work holds its event loop), not the lease's
 * truth: etcd still holds it, and the fence's own keepalive proves so before it counts.
 */
export function bridgeAfterMs(lossAfterMs: number): number {
  return lossAfterMs / 2;
}
/** The agent's process: gone (or a zombie), stopped (SIGSTOP, traced: it cannot renew), or running. */
export type AgentState = 'gone' | 'stopped' | 'running';

const Report = z.object({ leaseId: z.string(), at: z.string(), vms: z.array(z.string()) });

export const fenceFiles = (
  dataDir: string,
): { liveness: string; report: string; pid: string; log: string; renewed: string } => ({
  liveness: path.join(dataDir, 'run', 'cluster-liveness.json'),
  /** The fence's last successful renewal (keepalive and beat) of the agent's lease, for the agent. */
  renewed: path.join(dataDir, 'run', 'fence-renewed.json'),
  report: path.join(dataDir, 'run', 'fence-report.json'),
  pid: path.join(dataDir, 'run', 'fence.pid'),
  log: path.join(dataDir, 'fence.log'),
});

/** The fence keeping the lease of a gone agent, or bridging a late one's. */
export interface Keeping {
  leaseId: string;
  /** When the fence began (the grace counts from here). */
  since: number;
  /** When the fence's last successful keepalive was sent (0: none yet). */
  renewedAt: number;
  /** etcd answered that the lease expired: fence at once. */
  expired: boolean;
}

/** When the lease was last renewed, by the agent or by the fence on its behalf. */
export function lastRenewal(l: Liveness, keeping: Keeping | null): number {
  return keeping?.leaseId === l.leaseId ? Math.max(l.renewedAt, keeping.renewedAt) : l.renewedAt;
}

/**
 * Is the lease overdue (and not fenced for yet)? Pure: the one rule the fence acts on. The
 * fence's own keepalives count as renewals; a keepalive answered "expired" makes it due at once.
 */
export function fenceDue(
  l: Liveness | null,
  now: number,
  fencedLease: string | null,
  keeping: Keeping | null = null,
): boolean {
  if (l === null || l.leaseId === fencedLease) return false;
  if (keeping?.leaseId === l.leaseId && keeping.expired) return true;
  return now - lastRenewal(l, keeping) > l.lossAfterMs;
}

export type KeepVerdict =
  | { keep: Keeping }
  | {
      keep: null;
      why:
        | 'no-agent-yet'
        | 'fenced'
        | 'released'
        | 'agent-alive'
        | 'agent-stopped'
        | 'agent-wedged'
        | 'renewed'
        | 'grace-over'
        | 'overdue'
        | 'no-grace';
    };

/**
 * Should the fence keep the agent's lease alive now? Pure. While the agent's process is gone
 * (a restart), for the grace; while it runs but its renewals are late (bridgeAfterMs), until its
 * next renewal lands, for the grace since its last at most (then it is wedged); never for a
 * stopped agent (hung: fenced by the margin) or a lease the agent gave up. Only while the lease
 * is not overdue. A new lease in the file (a new agent joined) starts over: the old one is
 * dropped and expires by itself.
 */
export function keepVerdict(
  l: Liveness | null,
  now: number,
  agent: AgentState,
  fencedLease: string | null,
  keeping: Keeping | null,
  /**
   * The bridge that ended because the agent renewed again: its renewals still count (a late
   * agent's renewal is judged by its send time, which can be older than the fence's last one).
   */
  carried: Keeping | null = null,
): KeepVerdict {
  if (l === null) return { keep: null, why: 'no-agent-yet' };
  if (l.leaseId === fencedLease) return { keep: null, why: 'fenced' };
  if (l.released) return { keep: null, why: 'released' };
  if (agent === 'stopped') return { keep: null, why: 'agent-stopped' };
  const mine = keeping?.leaseId === l.leaseId ? keeping : null;
  const before = carried?.leaseId === l.leaseId ? carried : null;
  if (mine && l.renewedAt > mine.since) return { keep: null, why: 'renewed' };
  if (agent === 'running' && !mine && now - l.renewedAt <= bridgeAfterMs(l.lossAfterMs))
    return { keep: null, why: 'agent-alive' };
  if (fenceDue(l, now, fencedLease, mine ?? before)) return { keep: null, why: 'overdue' };
  if (l.graceMs <= 0) return { keep: null, why: 'no-grace' };
  // A gone agent gets the grace from when the fence began; a running one, from its own last renewal.
  if (agent === 'running' && now - l.renewedAt > l.graceMs) return { keep: null, why: 'agent-wedged' };
  if (agent === 'gone' && mine && now - mine.since >= l.graceMs) return { keep: null, why: 'grace-over' };
  return { keep: mine ?? { leaseId: l.leaseId, since: now, renewedAt: before?.renewedAt ?? 0, expired: false } };
}

/** The agent's process as the fence sees it (a zombie is gone; SIGSTOP or a tracer stops it): one read of its stat. */
export function agentState(pid: number): AgentState {
  if (!Number.isInteger(pid) || pid <= 0) return 'gone';
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return 'gone';
  }
  const state = /\) (\S) /.exec(readText(`/proc/${pid}/stat`) ?? '')?.[1];
  if (state === 'Z') return 'gone';
  return state === 'T' || state === 't' ? 'stopped' : 'running';
}

/** Is the agent's process there (a zombie is gone; a stopped or hung one is there)? */
export function processAlive(pid: number): boolean {
  return agentState(pid) !== 'gone';
}

async function writeAtomic(file: string, text: string): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  await fsp.writeFile(tmp, text);
  await fsp.rename(tmp, file);
}

/** The agent's side: writes the liveness file, newest value last (writes never overlap). */
export class LivenessWriter {
  private next: Liveness | null = null;
  private running: Promise<void> | null = null;

  constructor(private readonly dataDir: string) {}

  write(l: Liveness): Promise<void> {
    this.next = l;
    this.running ??= (async () => {
      try {
        for (let l2 = this.next; l2; l2 = this.next) {
          this.next = null;
          await writeAtomic(fenceFiles(this.dataDir).liveness, JSON.stringify(l2) + '\n').catch(() => undefined);
        }
      } finally {
        this.running = null;
      }
    })();
    return this.running;
  }
}

/** When the host's fence last renewed `leaseId` (ms since the epoch; 0: never). Synchronous: read by a watchdog. */
export function fenceRenewedAt(dataDir: string, leaseId: string): number {
  try {
    const r = JSON.parse(fs.readFileSync(fenceFiles(dataDir).renewed, 'utf8')) as { leaseId?: unknown; at?: unknown };
    return r.leaseId === leaseId && typeof r.at === 'number' ? r.at : 0;
  } catch {
    return 0;
  }
}

/** The VMs the fence killed while the agent was away (read once: the file is removed). */
export async function takeFenceReport(dataDir: string): Promise<string[]> {
  const file = fenceFiles(dataDir).report;
  const text = await fsp.readFile(file, 'utf8').catch(() => null);
  if (text === null) return [];
  await fsp.rm(file, { force: true });
  try {
    return Report.parse(JSON.parse(text)).vms;
  } catch {
    return [];
  }
}

function readText(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

function cmdline(pid: number): string[] {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
}

/**
 * What a fence does, versioned: a fence of another version is replaced when the agent starts
 * (an upgrade must not leave a fence that keeps a restarting agent's lease without writing its
 * beats: the leader would count the node down while its VMs run). 2: beats (beats.ts); 3: each
 * beat declares the window the fence counts by; 4: it bridges a running agent's late renewals
 * (keepVerdict) and honours a lease the agent released.
 */
export const FENCE_PROTOCOL = 4;

/** The protocol in a fence's pid file (second line; a fence from before it wrote none: 1). */
export function fenceProtocol(dataDir: string): number {
  const v = Number(readText(fenceFiles(dataDir).pid)?.split('\n')[1]?.trim());
  return Number.isInteger(v) && v > 0 ? v : 1;
}

/** The fence process of `dataDir`, if one runs (its pid file names a live `ferry fence --data DIR`). */
export function runningFence(dataDir: string): number | null {
  const pid = Number(readText(fenceFiles(dataDir).pid)?.split('\n')[0]?.trim());
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return null;
  const argv = cmdline(pid);
  const i = argv.indexOf('--data');
  return argv.includes('fence') && i >= 0 && path.resolve(argv[i + 1] ?? '') === path.resolve(dataDir) ? pid : null;
}

/**
 * Starts the fence of `dataDir` unless it runs: detached, so it outlives the agent. A fence of
 * another protocol (an upgrade) is stopped first; the agent, alive and renewing while it does
 * this, fences itself meanwhile.
 */
export async function ensureFence(dataDir: string): Promise<number | null> {
  fs.mkdirSync(path.join(dataDir, 'run'), { recursive: true });
  const running = runningFence(dataDir);
  if (running && fenceProtocol(dataDir) === FENCE_PROTOCOL) return running;
  if (running) {
    await stopFence(dataDir);
    if (runningFence(dataDir) === running)
      throw new FerryError(
        'E_FENCE',
        `Cannot replace the fence process of ${dataDir} (pid ${running}, an older version): it did not stop; ` +
          `stop it (kill ${running}) and restart the agent`,
      );
  }
  const [node, ...cli] = cliCommand();
  const fd = fs.openSync(fenceFiles(dataDir).log, 'a');
  try {
    const child = spawn(node, [...cli, 'fence', '--data', path.resolve(dataDir)], {
      detached: true,
      stdio: ['ignore', fd, fd],
    });
    child.on('error', () => undefined); // seen as no fence at the next start
    child.unref();
    return child.pid ?? null;
  } finally {
    fs.closeSync(fd);
  }
}

/** Stops the fence of `dataDir` (lab down, power loss of a lab host). */
export async function stopFence(dataDir: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!fs.existsSync(dataDir)) return;
  const pid = runningFence(dataDir);
  if (!pid) return;
  try {
    process.kill(pid, signal);
  } catch {
    return;
  }
  for (let i = 0; i < 50 && runningFence(dataDir) === pid; i++) await sleep(100);
}

/** QEMUs of this data folder's VMs: VM id → pid (pid file, checked against the process's command line). */
function qemusOf(dataDir: string): Map<string, number> {
  const runRoot = path.join(dataDir, 'run');
  const out = new Map<string, number>();
  const dirs = fs.existsSync(runRoot) ? fs.readdirSync(runRoot) : [];
  for (const id of dirs) {
    const pid = Number(readText(path.join(runRoot, id, 'qemu.pid'))?.trim());
    if (
      Number.isInteger(pid) &&
      pid > 0 &&
      isQemuAlive(pid) &&
      cmdline(pid).some((a) => a.includes(path.join(runRoot, id)))
    )
      out.set(id, pid);
  }
  return out;
}

export interface FenceOptions {
  dataDir: string;
  signal?: AbortSignal;
  log?: (line: string) => void;
  /** Poll period (default 100 ms). */
  periodMs?: number;
  /** Exit when no QEMU is left and the lease went unrenewed (and nothing was fenced) this long (default 60 s). */
  idleExitMs?: number;
}

/** The fence loop (`ferry fence`): returns when the data folder is gone, idle, or `signal` aborts. */
export async function runFence(o: FenceOptions): Promise<void> {
  const files = fenceFiles(o.dataDir);
  const log = o.log ?? ((line: string) => process.stdout.write(`${new Date().toISOString()} ${line}\n`));
  await fsp.mkdir(path.dirname(files.pid), { recursive: true });
  const other = runningFence(o.dataDir);
  if (other) {
    log(`a fence already runs for ${o.dataDir} (pid ${other})`);
    return;
  }
  await writeAtomic(files.pid, `${process.pid}\n${FENCE_PROTOCOL}\n`);
  log(`fence for ${o.dataDir} (pid ${process.pid}, nice ${os.getPriority()})`);
  const priority = new Priority(log);
  const ha = new HaList(log, files.renewed);
  let fencedLease: string | null = null;
  let keeping: Keeping | null = null;
  let carried: Keeping | null = null;
  let last: Liveness | null = null;
  let fencedAt = 0;
  const liveness = new LivenessFile(files.liveness);
  try {
    while (!o.signal?.aborted) {
      if (!fs.existsSync(o.dataDir)) return;
      try {
        // A file that does not parse changes nothing: the last good one stands (a dead agent writes no other).
        const l: Liveness | null = (await liveness.read()) ?? last;
        last = l;
        if (l) ha.follow(l);
        const now = Date.now();
        const agent = l ? agentState(l.agentPid) : 'running';
        const v = keepVerdict(l, now, agent, fencedLease, keeping, carried);
        if (v.keep && v.keep !== keeping && l)
          log(
            agent === 'gone'
              ? `agent ${l.agentPid} of ${l.node} is gone: keeping its lease ${l.leaseId} alive for it ` +
                  `(for at most ${l.graceMs} ms, until a new agent joins)`
              : `agent ${l.agentPid} of ${l.node} runs but last renewed its lease ${l.leaseId} ` +
                  `${now - l.renewedAt} ms ago: renewing it too until the agent's next renewal ` +
                  `(for at most ${l.graceMs} ms since its last)`,
          );
        if (keeping && (!v.keep || v.keep.leaseId !== keeping.leaseId))
          log(
            `no longer keeping lease ${keeping.leaseId}: ` +
              (v.keep ? `${STOP_REASON['agent-alive']} (lease ${v.keep.leaseId})` : STOP_REASON[v.why]),
          );
        // Carried only while the agent that renewed again goes on; any other end fences by the agent's renewals.
        if (!v.keep && v.why === 'renewed') carried = keeping;
        else if (v.keep || (v.why !== 'agent-alive' && v.why !== 'overdue')) carried = null;
        keeping = v.keep;
        priority.set(keeping !== null);
        if (keeping && l) ha.keepAlive(keeping, l);
        if (fenceDue(l, now, fencedLease, keeping ?? carried) && l) {
          fencedLease = l.leaseId;
          fencedAt = now;
          await fence(o.dataDir, l, ha, now, lastRenewal(l, keeping ?? carried), log);
          keeping = null;
        }
        // From the last renewal or fencing: after a grace that ended, the agent still has a minute to come back.
        const idleSince = l ? Math.max(lastRenewal(l, keeping), fencedAt) : now;
        if (now - idleSince > (o.idleExitMs ?? 60_000) && qemusOf(o.dataDir).size === 0) {
          log('the agent is gone and no VM runs here: nothing left to guard');
          return;
        }
      } catch (err) {
        log(`fence check failed (${messageOf(err)}); checking again`); // never exit: this process is the guard
      }
      await sleep(o.periodMs ?? 100, o.signal).catch(() => undefined);
    }
  } finally {
    priority.set(false);
    await ha.close();
    if (runningFence(o.dataDir) === null) await fsp.rm(files.pid, { force: true });
  }
}

/**
 * While the fence keeps a gone agent's lease, or bridges a late one's, it must renew within the
 * lease's margin however busy the host: it runs above the guests then (it was started by the
 * agent, which runs below them, Nice=5, and inherited that). Otherwise it stays at the agent's
 * level: its check every 100 ms costs little, but a guard should not take more from the guests
 * than the agent it watches. Raising needs root (CAP_SYS_NICE).
 */
export const FENCE_NICE = -5;
class Priority {
  private readonly base = os.getPriority();
  private raised = false;

  constructor(private readonly log: (s: string) => void) {}

  set(raise: boolean): void {
    if (raise === this.raised) return;
    try {
      os.setPriority(raise ? Math.min(FENCE_NICE, this.base) : this.base);
      this.raised = raise;
      this.log(`now at nice ${os.getPriority()}`);
    } catch (err) {
      if (raise) this.log(`cannot raise the fence's priority to nice ${FENCE_NICE} (${messageOf(err)}); going on`);
      this.raised = raise; // tried once; the check goes on at the inherited level
    }
  }
}

const STOP_REASON: Record<Exclude<KeepVerdict, { keep: Keeping }>['why'], string> = {
  'no-agent-yet': 'no agent wrote its lease yet',
  fenced: 'it was fenced',
  released: 'the agent gave it up',
  'agent-alive': 'an agent process runs again',
  'agent-stopped': 'the agent process is stopped (hung)',
  'agent-wedged': 'the agent has not renewed it itself for the whole grace (wedged); fencing',
  renewed: 'the agent renewed it again',
  'grace-over': 'the grace is over and the agent did not come back; fencing now',
  overdue: 'the fence could not renew it within the margin (etcd unreachable?)',
  'no-grace': 'no grace is configured',
};

/**
 * The agent's liveness file, parsed again only when it changed (the agent replaces it at each
 * renewal, about once a second): the fence looks every 100 ms, and a stat is far cheaper than a
 * read and a schema check.
 */
export class LivenessFile {
  private key = '';
  private value: Liveness | null = null;
  constructor(private readonly file: string) {}

  async read(): Promise<Liveness | null> {
    const st = await fsp.stat(this.file).catch(() => null);
    if (!st) return null;
    const key = `${st.ino}:${st.mtimeMs}:${st.size}`;
    if (key === this.key) return this.value;
    const l = await readLiveness(this.file);
    // A torn read is not remembered: the next look reads the file again.
    this.key = l ? key : '';
    this.value = l;
    return l;
  }
}

async function readLiveness(file: string): Promise<Liveness | null> {
  const text = await fsp.readFile(file, 'utf8').catch(() => null);
  if (text === null) return null;
  try {
    return Liveness.parse(JSON.parse(text));
  } catch {
    return null; // a torn or foreign file: the next read decides
  }
}

/** Kills this node's HA VMs at once and notes them for the agent. */
async function fence(
  dataDir: string,
  l: Liveness,
  ha: HaList,
  now: number,
  renewedAt: number,
  log: (s: string) => void,
): Promise<void> {
  const ids = ha.ids();
  const qemus = qemusOf(dataDir);
  const victims = [...qemus].filter(([id]) => ids.has(id));
  log(
    `lease ${l.leaseId} of ${l.node} not renewed for ${now - renewedAt} ms (margin ${l.lossAfterMs} ms): ` +
      `killing ${victims.length} HA VM(s)${victims.length ? `: ${victims.map(([id]) => ids.get(id)).join(', ')}` : ''}`,
  );
  for (const [, pid] of victims) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone already */
    }
  }
  for (let i = 0; i < 50 && victims.some(([, pid]) => isQemuAlive(pid)); i++) await sleep(20);
  const names = victims.map(([id]) => ids.get(id) ?? id);
  if (names.length)
    await writeAtomic(
      fenceFiles(dataDir).report,
      JSON.stringify({ leaseId: l.leaseId, at: new Date().toISOString(), vms: names }) + '\n',
    );
  log(`fenced: ${names.join(', ') || 'nothing to stop'}`);
}

/** However quiet the watch, the HA records are read again this often. */
const HA_REREAD_MS = 10_000;

/**
 * This node's HA VMs as the cluster records them (vms/ owned by the node), kept fresh while etcd
 * answers; its connection also keeps a gone agent's lease alive.
 */
class HaList {
  private store: ClusterStore | null = null;
  private target = '';
  private list = new Map<string, string>();
  private refreshing: Promise<void> | null = null;
  private lastRead = 0;
  private failing = false;
  /** Cancels the watch on `vms/` (null: none runs). */
  private watching: (() => Promise<void>) | null = null;
  private watchFailing = false;
  /** The watch saw a change since the last read. */
  private changed = false;
  private keeping: Promise<void> | null = null;
  private keepFailing = false;
  private keepFailedAt = 0;
  /** The last beat this fence wrote for the gone agent. */
  private beat = 0;

  constructor(
    private readonly log: (s: string) => void,
    private readonly renewedFile: string,
  ) {}

  /** VM id → name. */
  ids(): Map<string, string> {
    return this.list;
  }

  /**
   * Reads the list again when it may have changed, without ever holding up the fence loop: soon
   * after the watch on `vms/` saw a change, every second while there is no watch (not connected yet,
   * ended) or the last read failed, and every HA_REREAD_MS anyway (a watch can go quiet without
   * an error: its member cut off from the others). Reading every record each second was a poll:
   * an etcd call a second per host for a list that rarely changes.
   */
  follow(l: Liveness): void {
    if (this.refreshing) return;
    // A change is read soon (at most 5 reads a second in a burst of them, a drain's).
    const gap = this.changed ? 200 : !this.watching || this.failing ? 1000 : HA_REREAD_MS;
    if (this.lastRead !== 0 && Date.now() - this.lastRead < gap) return;
    this.refreshing = this.refresh(l).finally(() => {
      this.refreshing = null;
      this.lastRead = Date.now();
    });
  }

  private async refresh(l: Liveness): Promise<void> {
    try {
      const target = `${l.cluster} ${l.endpoints.join(',')} ${l.tls.cert}`;
      if (!this.store || target !== this.target) {
        await this.unwatch();
        await this.store?.close();
        this.store = null;
        this.target = target;
        this.store = await EtcdStore.connect({
          endpoints: l.endpoints,
          tls: l.tls,
          prefix: `/ferry/clusters/${l.cluster}/`,
          dialTimeoutMs: 2000,
          callTimeoutMs: 2000,
        });
      }
      if (!this.watching) await this.watch(this.store);
      // Cleared before the read: a change during it is read again.
      this.changed = false;
      const vms = await K.readAll(this.store, K.vms, (bad) => {
        this.log(`ignoring ${bad.key}: ${bad.issue}`);
      });
      this.list = new Map([...vms.values()].filter((e) => e.value.owner === l.node).map((e) => [e.value.id, e.name]));
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.log(`cannot read the cluster's HA records (${messageOf(err)}); keeping the last list`);
      this.failing = true;
    }
  }

  /** Watches `vms/` (a failure to start is logged once: the list is then read every second, as before). */
  private async watch(store: ClusterStore): Promise<void> {
    try {
      this.watching = await store.watchPrefix(
        K.vms.prefix,
        () => {
          this.changed = true;
        },
        {
          timeoutMs: 2000,
          onError: (err) => {
            this.log(`the watch on the HA records ended (${messageOf(err)}); reading them every second`);
            this.watching = null;
            this.changed = true;
          },
        },
      );
      if (this.watchFailing) this.log('watching the HA records again');
      this.watchFailing = false;
    } catch (err) {
      if (!this.watchFailing)
        this.log(`cannot watch the HA records (${messageOf(err)}); reading them every second meanwhile`);
      this.watchFailing = true;
    }
  }

  private async unwatch(): Promise<void> {
    const cancel = this.watching;
    this.watching = null;
    await cancel?.().catch(() => undefined);
  }

  /**
   * Sends one keepalive for the gone agent's lease when one is due (as often as the agent's own; 100 ms after a
   * failure), without holding up the fence loop; notes in `k` when each successful one was sent.
   */
  keepAlive(k: Keeping, l: Liveness): void {
    const now = Date.now();
    if (
      this.keeping ||
      k.expired ||
      (k.renewedAt && now - k.renewedAt < keepalivePeriodMs(l.ttlMs)) ||
      now - this.keepFailedAt < 100
    )
      return;
    const store = this.store;
    if (!store) {
      if (!this.keepFailing) this.log(`cannot keep lease ${k.leaseId} alive: no etcd connection yet`);
      this.keepFailing = true;
      this.keepFailedAt = now;
      return;
    }
    // Each attempt short (as the agent's own keepalives): a frozen member costs one attempt, not the margin.
    const timeoutMs = Math.max(500, Math.min(l.ttlMs / 4, 2000));
    const member = l.member;
    // A renewal is the keepalive and the beat (the leader counts the node down without either),
    // sent together: on a loaded host two round trips one after the other can outlast the margin
    // that is left when the agent died just before its next renewal.
    let beat: Promise<unknown> = Promise.resolve();
    if (member) {
      this.beat = nextBeat(this.beat, now);
      // The window this fence fences by (its own version's), which the leader then counts.
      const record = { ...member, beat: this.beat, beatWindowMs: BEAT_WINDOW_MS };
      beat = store.put(K.members.key(l.node), K.members.encode(record), { timeoutMs });
    }
    this.keeping = Promise.all([store.keepAliveOnce(k.leaseId, { timeoutMs }), beat])
      .then(([ttl]) => {
        // Due after the beat's own loss (the window less the agent's margin), if sooner than the lease's.
        const at = member ? renewedAt(now, now, l.lossAfterMs, beatLossMs(l.ttlMs - l.lossAfterMs)) : now;
        k.renewedAt = Math.max(k.renewedAt, at);
        this.keepFailing = false;
        // A busy agent that wakes up then finds its lease renewed, and does not fence itself.
        void writeAtomic(this.renewedFile, JSON.stringify({ leaseId: k.leaseId, at: k.renewedAt }) + '\n').catch(
          () => undefined,
        );
        this.log(`kept lease ${k.leaseId} alive (etcd: TTL ${ttl} s)`);
      })
      .catch((err: unknown) => {
        if (err instanceof FerryError && err.code === 'E_STORE_LEASE_LOST') {
          k.expired = true;
          this.log(`lease ${k.leaseId} expired in etcd: fencing now`);
          return;
        }
        if (!this.keepFailing) this.log(`cannot keep lease ${k.leaseId} alive (${messageOf(err)}); retrying`);
        this.keepFailing = true;
        this.keepFailedAt = Date.now();
      })
      .finally(() => {
        this.keeping = null;
      });
  }

  async close(): Promise<void> {
    await this.keeping;
    await this.refreshing;
    await this.unwatch();
    await this.store?.close().catch(() => undefined);
  }
}
