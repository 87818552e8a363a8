// Does a Linux guest survive a live move under TCG on a busy host (docs/tcg-moves.md)? Raw QEMU
// and QMP only, no Ferry: the probe guest (256 MiB, 1 vCPU, qemu64) dirtying memory is moved
// twice per trial over a Unix socket while busy loops load every core; a move counts as alive
// when the guest still prints heartbeats 2.5 s after it and its console shows no oops. Each
// variant adds words to the guest's kernel command line ('-' adds none). --writer: the probe's
// disk writer runs too (a synced 4 KiB record every 10 ms), on a raw disk both QEMUs share.
//
//   flock /work/wt/.heavy.lock npm run bench:tcg-moves -- [--variants '-;pti=on'] [--trials N]
//     [--dirty MIB@MIBPS] [--busy N] [--bandwidth MIBPS] [--downtime MS] [--writer]
//
// Every QEMU and busy loop it starts is killed, and its temp dir removed, on every exit path.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { QemuProcess } from '../src/qemu/process.js';
import { sleep } from '../src/util/exec.js';
import { probeGuestFiles } from '../guest/paths.js';
import { table } from './lib/stats.js';

const { values: args } = parseArgs({
  options: {
    variants: { type: 'string', default: '-;pti=on' },
    trials: { type: 'string', default: '6' },
    dirty: { type: 'string', default: '64@16' },
    busy: { type: 'string', default: String(os.cpus().length) },
    bandwidth: { type: 'string', default: '128' },
    writer: { type: 'boolean', default: false },
    downtime: { type: 'string', default: '300' },
  },
});
const trials = Number(args.trials);
const busyLoops = Number(args.busy);
const bandwidthMiBps = Number(args.bandwidth);
if (!/^\d+(@\d+)?$/.test(args.dirty)) throw new Error(`--dirty ${args.dirty}: use MIB or MIB@MIBPS, e.g. 64@16`);
for (const [flag, n] of [
  ['--trials', trials],
  ['--busy', busyLoops],
  ['--bandwidth', bandwidthMiBps],
  ['--downtime', Number(args.downtime)],
] as const)
  if (!Number.isInteger(n) || n < 0) throw new Error(`${flag}: use a whole number`);
const files = probeGuestFiles();
if (!files) throw new Error('Cannot run: the probe guest is not built; run scripts/setup');
const guest = files;

const log = (m: string): void => void process.stderr.write(`[tcg-moves] ${m}\n`);
const OOPS_RE = /Oops|BUG:|panic|general protection|invalid opcode|soft lockup/;
const qemus = new Set<QemuProcess>();
const loops = new Set<ChildProcess>();

interface Vm {
  proc: QemuProcess;
  serial: string;
}

let seq = 0;
const writer = args.writer ? '' : 'ferry.nowriter';
/** A QEMU of the probe guest, its monitor connected (QemuProcess: an early exit says why). */
async function startQemu(dir: string, append: string, incoming: string | null): Promise<Vm> {
  seq += 1;
  const runDir = path.join(dir, `qemu-${seq}`);
  const serial = path.join(runDir, 'serial.log');
  const qmpSocket = path.join(runDir, 'qmp.sock');
  const argv = [
    ...['-nodefaults', '-no-user-config', '-display', 'none', '-machine', 'pc-i440fx-7.2', '-accel', 'tcg'],
    ...['-cpu', 'qemu64', '-m', '256', '-kernel', guest.kernel, '-initrd', guest.initrd],
    ...['-append', `console=ttyS0 panic=-1 ${writer} ferry.dirty=${args.dirty} ${append}`.trim()],
    // The writer's disk, shared by both QEMUs of a move as on shared storage.
    ...(args.writer ? ['-drive', `file=${path.join(dir, 'data.raw')},if=virtio,format=raw,cache=none`] : []),
    ...['-serial', `file:${serial}`, '-qmp', `unix:${qmpSocket},server=on,wait=off`],
    ...(incoming ? ['-incoming', incoming] : []),
  ];
  const proc = await QemuProcess.spawn(argv, {
    vm: `tcg-moves#${seq}`,
    runDir,
    qmpSocket,
    pidFile: path.join(runDir, 'qemu.pid'),
  });
  qemus.add(proc);
  void proc.exited.then(() => qemus.delete(proc));
  return { proc, serial };
}

const console_ = (vm: Vm): string => {
  try {
    return fs.readFileSync(vm.serial, 'utf8');
  } catch {
    return '';
  }
};
const heartbeats = (vm: Vm): number => (console_(vm).match(/ferry-hb /g) ?? []).length;

/** Moves `src` to a new QEMU and kills the source; the destination runs when it returns. */
async function move(dir: string, src: Vm, append: string): Promise<Vm> {
  const uri = `unix:${path.join(dir, `migrate-${seq + 1}.sock`)}`;
  const dest = await startQemu(dir, append, uri);
  const qs = src.proc.qmp;
  await qs.execute(
    'migrate-set-parameters',
    { 'max-bandwidth': bandwidthMiBps * 1024 * 1024, 'downtime-limit': Number(args.downtime) },
    { timeoutMs: 5000 },
  );
  await qs.execute('migrate', { uri }, { timeoutMs: 5000 });
  const until = Date.now() + 300_000;
  for (;;) {
    if (Date.now() > until) throw new Error('the move did not end in 300 s');
    const s = await qs.execute('query-migrate', undefined, { timeoutMs: 5000 });
    if (s.status === 'completed') break;
    if (s.status === 'failed' || s.status === 'cancelled') throw new Error(`the move ${s.status}`);
    await sleep(100);
  }
  const st = await dest.proc.qmp.execute('query-status', undefined, { timeoutMs: 5000 });
  if (st.status !== 'running') await dest.proc.qmp.execute('cont', undefined, { timeoutMs: 5000 });
  await src.proc.kill();
  return dest;
}

interface Result {
  variant: string;
  moves: number;
  alive: number;
  deaths: string[];
}

async function trial(dir: string, append: string, r: Result): Promise<void> {
  let vm = await startQemu(dir, append, null);
  const busy: ChildProcess[] = [];
  try {
    for (let i = 0; i < 600 && !console_(vm).includes('ferry-dirty '); i++) await sleep(100);
    if (!console_(vm).includes('ferry-dirty ')) throw new Error('the probe guest did not start its dirtier in 60 s');
    await sleep(2000);
    for (let i = 0; i < busyLoops; i++) {
      const b = spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' });
      loops.add(b);
      b.once('exit', () => loops.delete(b));
      busy.push(b);
    }
    for (let m = 0; m < 2; m++) {
      vm = await move(dir, vm, append);
      const before = heartbeats(vm);
      await sleep(2500);
      const text = console_(vm);
      r.moves += 1;
      if (heartbeats(vm) > before && !OOPS_RE.test(text)) {
        r.alive += 1;
        continue;
      }
      const line = text.split('\n').find((l) => OOPS_RE.test(l) || /RIP:/.test(l)) ?? 'silent';
      r.deaths.push(line.replace(/^\[\s*[\d.]+\]\s*/, '').slice(0, 70));
      break;
    }
  } finally {
    for (const b of busy) b.kill('SIGKILL');
    await vm.proc.kill();
  }
}

async function main(): Promise<void> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ftcg-'));
  const cleanup = (): void => {
    // Synchronous: it also runs from a signal handler.
    for (const b of loops) b.kill('SIGKILL');
    for (const q of qemus) {
      try {
        process.kill(q.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.once(sig, () => {
      cleanup();
      process.exit(130);
    });
  const results: Result[] = [];
  try {
    // The probe's writer keeps a circular log of synced records on its first virtio disk.
    if (args.writer) await fsp.writeFile(path.join(dir, 'data.raw'), Buffer.alloc(64 * 1024 * 1024));
    log(`${os.cpus().length} cpus, ${busyLoops} busy loops, dirtier ${args.dirty} MiB/s, ${bandwidthMiBps} MiB/s`);
    const variants = args.variants.split(';').map((v) => v.trim());
    // Variants alternate trial by trial, so a change in the machine's load hits them alike.
    for (const v of variants) results.push({ variant: v, moves: 0, alive: 0, deaths: [] });
    for (let t = 0; t < trials; t++)
      for (const r of results) {
        await trial(dir, r.variant === '-' ? '' : r.variant, r);
        log(`trial ${t + 1}/${trials} ${r.variant}: ${r.alive} of ${r.moves} moves alive`);
      }
  } finally {
    cleanup();
  }
  process.stdout.write(
    table(
      ['kernel command line adds', 'moves', 'alive'],
      results.map((r) => [r.variant, String(r.moves), String(r.alive)]),
    ) + '\n',
  );
  for (const r of results) for (const d of r.deaths) process.stdout.write(`died (${r.variant}): ${d}\n`);
}

await main();
