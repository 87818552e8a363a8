// A lab for one e2e test file: up before, down and removed after, whatever happens.
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import fs from 'node:fs';
import path from 'node:path';
import { before, after, afterEach } from 'node:test';
import { ferry, ferryOk } from './cli.js';
import type { LabStatus } from '../../src/lab/lab.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { parseSerial, splitHeartbeats } from '../../guest/records.js';
import { sleep } from '../../src/util/exec.js';
import { labTempDir } from '../helpers.js';
import { silentGuestFacts } from './silent-guest.js';

export interface TestLab {
  dir: string;
  lab: string;
  status: LabStatus;
}

/**
 * `vmsPerTest`: every test of the file makes and removes its own VMs, so a VM still there after a
 * test is a failed test's; it is stopped and removed, so that a guest left spinning (say, one that
 * died of QEMU-NOTES §E) does not load the machine for the tests after it and fail them too.
 */
export function useLab(hosts = 2, o: { vmsPerTest?: boolean } = {}): TestLab {
  const l: TestLab = { dir: '', lab: '', status: { dir: '', hosts: [], etcd: [] } };
  before(async () => {
    l.dir = await labTempDir('ferry-e2e-');
    l.lab = path.join(l.dir, 'lab');
    l.status = await ferryOk<LabStatus>(['lab', 'up', '--dir', l.lab, '--hosts', String(hosts), '--json']);
  });
  if (o.vmsPerTest)
    afterEach(async () => {
      // Moves still running first (a VM being moved refuses a stop), then the VMs.
      const m = await ferry(['migration', 'list', '--json'], { lab: l.lab });
      if (m.code === 0)
        for (const rec of JSON.parse(m.stdout) as MigrationRecord[]) {
          process.stderr.write(`# cancelling move ${rec.id} of ${rec.vm} (${rec.state}), left by a failed test\n`);
          await ferry(['migration', 'cancel', rec.id], { lab: l.lab });
          await waitMigration(l, rec.id, ['completed', 'failed', 'cancelled'], 120_000).catch(() => undefined);
        }
      const r = await ferry(['vm', 'list', '--json'], { lab: l.lab });
      if (r.code !== 0) return;
      for (const v of JSON.parse(r.stdout) as VmView[]) {
        process.stderr.write(`# removing VM ${v.name} on ${v.host}, left by a failed test\n`);
        await ferry(['vm', 'stop', v.name, '--force'], { lab: l.lab });
        await ferry(['vm', 'rm', v.name], { lab: l.lab });
      }
    });
  after(async () => {
    await ferry(['lab', 'down', '--dir', l.lab]);
    await fsp.rm(l.dir, { recursive: true, force: true });
  });
  return l;
}

export function hostData(l: TestLab, host: string): string {
  return path.join(l.lab, 'hosts', host, 'data');
}

/** The serial log of a VM on a host (each host keeps its own). */
export function serialLog(l: TestLab, host: string, vmId: string): string {
  return path.join(hostData(l, host), 'run', vmId, 'serial.log');
}

export async function readLogs(l: TestLab, vmId: string): Promise<string[]> {
  const out: string[] = [];
  for (const h of l.status.hosts) {
    const f = serialLog(l, h.name, vmId);
    if (fs.existsSync(f)) out.push(await fsp.readFile(f, 'utf8'));
  }
  return out;
}

/** A Linux console that shows a kernel oops or panic (after a move under TCG: QEMU-NOTES §E). */
export const kernelOopsed = (console: string): boolean =>
  /Oops|BUG:|panic|general protection|invalid opcode/.test(console);

/** Waits until a probe VM has printed `n` heartbeats and acks on its current host. */
export async function waitProbe(l: TestLab, vm: VmView, n = 20, timeoutMs = 60_000): Promise<void> {
  await waitSerial(serialLog(l, vm.host, vm.id), {
    heartbeats: n,
    acks: Math.min(n, 10),
    timeoutMs,
    lab: l.lab,
    vm: vm.name,
    host: vm.host,
  });
}

/**
 * Waits until a probe guest's serial log `file` shows `heartbeats` heartbeats and `acks` acks. A
 * guest that does not get there fails the test with what it printed: a test that went on with a
 * guest still booting (under load in CI) failed on "no acks" with nothing to explain it.
 */
export async function waitSerial(
  file: string,
  o: { heartbeats?: number; acks: number; timeoutMs?: number; lab: string; vm: string; host: string },
): Promise<void> {
  const timeoutMs = o.timeoutMs ?? 60_000;
  const until = Date.now() + timeoutMs;
  let text = '';
  let s = parseSerial(text);
  while (Date.now() < until) {
    text = await fsp.readFile(file, 'utf8').catch(() => '');
    s = parseSerial(text);
    if (s.heartbeats.length >= (o.heartbeats ?? 0) && s.acks.length >= o.acks) return;
    await sleep(200);
  }
  // Say what the guest did, so a failure in CI is explained (a kernel oops after a move under
  // TCG is QEMU-NOTES §E; a writer without acks is a disk problem; silence is a hung guest).
  // CI keeps only the first lines of a failure: the verdict and the console first, then a short
  // view of the VM (the whole `vm show` pushed the console out of CI's excerpt once).
  const shown = await ferry(['vm', 'show', o.vm, '--json'], { lab: o.lab });
  let view = shown.stdout.trim() || shown.stderr.trim();
  let disk: { path: string; format: string } | undefined;
  try {
    const v = JSON.parse(view) as Partial<VmView>;
    view = JSON.stringify({ host: v.host, state: v.state, qemuState: v.qemuState, pid: v.pid });
    disk = v.disks?.[0];
  } catch {
    // not JSON: shown as printed
  }
  const oops = kernelOopsed(text) ? ' — its kernel oopsed (QEMU 7.2 under TCG after a move: docs/tcg-moves.md)' : '';
  const hbs = o.heartbeats ? ` and ${o.heartbeats} heartbeats` : '';
  const facts = await silentGuestFacts({ lab: o.lab, vmId: path.basename(path.dirname(file)), host: o.host, disk });
  throw new Error(
    `probe VM ${o.vm} did not print ${o.acks} acks${hbs} in ${timeoutMs} ms ` +
      `on ${o.host}: ${s.heartbeats.length} heartbeats, ${s.acks.length} acks${oops}\n${facts}\n` +
      `serial log ends:\n${text.split('\n').slice(-25).join('\n')}\nvm show: ${view}\n` +
      (await hostSaid(o.lab, o.host, o.vm)),
  );
}

/** The host's own words about a VM (a fence that killed it, a QEMU that exited): its last lines. */
export async function hostSaid(lab: string, host: string, vm: string): Promise<string> {
  const hostDir = path.join(lab, 'hosts', host);
  const said: string[] = [];
  for (const f of [path.join(hostDir, 'agent.log'), path.join(hostDir, 'data', 'fence.log')]) {
    const lines = (await fsp.readFile(f, 'utf8').catch(() => '')).split('\n');
    said.push(...lines.filter((x) => x.includes(vm) || /kill|fenc|exit/i.test(x)).slice(-4));
  }
  return `${host} logged:\n${said.join('\n')}`;
}

/**
 * Every heartbeat seq from the first to the last, across all hosts' logs: none lost. `split`:
 * seqs whose line a switch-over cut between two hosts' logs (both halves found, so printed);
 * `missing`: seqs printed nowhere.
 */
export function heartbeatContinuity(logs: readonly string[]): {
  first: number;
  last: number;
  missing: number[];
  split: number[];
  total: number;
} {
  const seqs = new Set<number>();
  for (const t of logs) for (const h of parseSerial(t).heartbeats) seqs.add(h.seq);
  const sorted = [...seqs].sort((a, b) => a - b);
  const first = sorted[0] ?? 0;
  const last = sorted.at(-1) ?? 0;
  const absent: number[] = [];
  for (let s = first; s <= last && absent.length < 50; s++) if (!seqs.has(s)) absent.push(s);
  const split = splitHeartbeats(logs, absent);
  const missing = absent.filter((s) => !split.includes(s));
  return { first, last, missing, split, total: sorted.length };
}

/**
 * Asserts that no heartbeat is missing from `logs` (a VM's console logs, in any order); the
 * message quotes the lines around the first one lost in each log, so a failure in CI says what
 * took its place (a cut line, a kernel message, nothing).
 */
export function assertHeartbeatsContinue(
  logs: readonly string[],
  names: readonly string[] = [],
  what = 'no heartbeat lost',
): ReturnType<typeof heartbeatContinuity> {
  const c = heartbeatContinuity(logs);
  assert.deepEqual(
    c.missing,
    [],
    `${what}: ${c.missing.join(',')} missing of ${c.first}..${c.last}; around the first:\n` +
      linesAround(logs, c.missing[0] ?? 0, names),
  );
  return c;
}

/**
 * Where heartbeat `seq` should be, in each log: the lines around its neighbours (seq − 1 and
 * seq + 1), quoted so a cut line or a stray byte shows. For the message of a lost heartbeat.
 */
export function linesAround(logs: readonly string[], seq: number, names: readonly string[] = []): string {
  const out: string[] = [];
  logs.forEach((text, i) => {
    const lines = text.split('\n');
    const at = lines.findIndex((l) => l.includes(`ferry-hb ${seq - 1} `) || l.includes(`ferry-hb ${seq + 1} `));
    const where = at < 0 ? 'neither neighbour' : lines.slice(Math.max(0, at - 2), at + 4).map((l) => JSON.stringify(l));
    out.push(`${names[i] ?? `log ${i}`}: ${Array.isArray(where) ? where.join(' | ') : where}`);
  });
  return out.join('\n');
}

/** Polls a migration record until it reaches one of `states`. */
export async function waitMigration(
  l: TestLab,
  id: string,
  states: string[],
  timeoutMs = 90_000,
): Promise<MigrationRecord> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const r = await ferry(['migration', 'show', id, '--json'], { lab: l.lab });
    if (r.code === 0) {
      const rec = JSON.parse(r.stdout) as MigrationRecord;
      if (states.includes(rec.state)) return rec;
    }
    if (Date.now() > until) throw new Error(`migration ${id} did not reach ${states.join('/')}`);
    await sleep(150);
  }
}
