// The fence: a small process per host, apart from the agent (Proxmox's watchdog-mux plays this
// part), so that a host whose agent died, hung or was cut off never keeps running an HA VM the
// cluster is about to restart elsewhere. QEMU runs detached and survives its agent; without
// the fence only QEMU's image lock would stop a second copy.
//
// The agent (its Membership) writes DATA/run/cluster-liveness.json each time its node lease
// is renewed: the lease, when the last successful keepalive was sent, and the fence margin.
// `ferry fence --data DATA` (started by the agent, detached, one per data folder) reads it
// every 100 ms; when the lease has not been renewed for the margin (2.5 s of a 5 s lease, as
// the agent's own self-fence) it kills, at once, the QEMU of every VM the cluster records as
// this node's HA VM (read from etcd with the host's certificate while it can, the last list
// otherwise), and notes them in DATA/run/fence-report.json so that the agent, back in time,
// runs them again. While the lease is renewed it never kills anything.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { cliCommand } from '../../guest/paths.js';
import { isQemuAlive } from '../qemu/process.js';
import { messageOf } from '../errors.js';
import { sleep } from '../util/exec.js';
import { EtcdStore, type ClusterStore } from './store.js';
import * as K from './keys.js';

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
});
export type Liveness = z.infer<typeof Liveness>;

const Report = z.object({ leaseId: z.string(), at: z.string(), vms: z.array(z.string()) });

export const fenceFiles = (dataDir: string): { liveness: string; report: string; pid: string; log: string } => ({
  liveness: path.join(dataDir, 'run', 'cluster-liveness.json'),
  report: path.join(dataDir, 'run', 'fence-report.json'),
  pid: path.join(dataDir, 'run', 'fence.pid'),
  log: path.join(dataDir, 'fence.log'),
});

/** Is the lease overdue (and not fenced for yet)? Pure: the one rule the fence acts on. */
export function fenceDue(l: Liveness | null, now: number, fencedLease: string | null): boolean {
  return l !== null && l.leaseId !== fencedLease && now - l.renewedAt > l.lossAfterMs;
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

/** The fence process of `dataDir`, if one runs (its pid file names a live `ferry fence --data DIR`). */
export function runningFence(dataDir: string): number | null {
  const pid = Number(readText(fenceFiles(dataDir).pid)?.trim());
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return null;
  const argv = cmdline(pid);
  const i = argv.indexOf('--data');
  return argv.includes('fence') && i >= 0 && path.resolve(argv[i + 1] ?? '') === path.resolve(dataDir) ? pid : null;
}

/** Starts the fence of `dataDir` unless it runs: detached, so it outlives the agent. */
export function ensureFence(dataDir: string): number | null {
  fs.mkdirSync(path.join(dataDir, 'run'), { recursive: true });
  const running = runningFence(dataDir);
  if (running) return running;
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
  /** Exit when the lease has been overdue this long and no QEMU is left (default 60 s). */
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
  await writeAtomic(files.pid, `${process.pid}\n`);
  log(`fence for ${o.dataDir} (pid ${process.pid})`);
  const ha = new HaList(log);
  let fencedLease: string | null = null;
  try {
    while (!o.signal?.aborted) {
      if (!fs.existsSync(o.dataDir)) return;
      try {
        const l = await readLiveness(files.liveness);
        if (l) ha.follow(l);
        const now = Date.now();
        if (fenceDue(l, now, fencedLease) && l) {
          fencedLease = l.leaseId;
          await fence(o.dataDir, l, ha, now, log);
        }
        if (l && now - l.renewedAt > (o.idleExitMs ?? 60_000) && qemusOf(o.dataDir).size === 0) {
          log('the agent is gone and no VM runs here: nothing left to guard');
          return;
        }
      } catch (err) {
        log(`fence check failed (${messageOf(err)}); checking again`); // never exit: this process is the guard
      }
      await sleep(o.periodMs ?? 100, o.signal).catch(() => undefined);
    }
  } finally {
    await ha.close();
    if (runningFence(o.dataDir) === null) await fsp.rm(files.pid, { force: true });
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
async function fence(dataDir: string, l: Liveness, ha: HaList, now: number, log: (s: string) => void): Promise<void> {
  const ids = ha.ids();
  const qemus = qemusOf(dataDir);
  const victims = [...qemus].filter(([id]) => ids.has(id));
  log(
    `lease ${l.leaseId} of ${l.node} not renewed for ${now - l.renewedAt} ms (margin ${l.lossAfterMs} ms): ` +
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

/** This node's HA VMs as the cluster records them (vms/ owned by the node), kept fresh while etcd answers. */
class HaList {
  private store: ClusterStore | null = null;
  private target = '';
  private list = new Map<string, string>();
  private refreshing: Promise<void> | null = null;
  private lastRead = 0;
  private failing = false;

  constructor(private readonly log: (s: string) => void) {}

  /** VM id → name. */
  ids(): Map<string, string> {
    return this.list;
  }

  /** Re-reads the list about every second, without ever holding up the fence loop. */
  follow(l: Liveness): void {
    if (this.refreshing || Date.now() - this.lastRead < 1000) return;
    this.refreshing = this.refresh(l).finally(() => {
      this.refreshing = null;
      this.lastRead = Date.now();
    });
  }

  private async refresh(l: Liveness): Promise<void> {
    try {
      const target = `${l.cluster} ${l.endpoints.join(',')} ${l.tls.cert}`;
      if (!this.store || target !== this.target) {
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

  async close(): Promise<void> {
    await this.refreshing;
    await this.store?.close().catch(() => undefined);
  }
}
