// Resumable disk copy benchmark (issue 17 item 6): what a retry re-copies after a cut, for a
// shared-nothing move (`move-vm --include-storage`, the destination's QEMU killed) and a
// storage move (`move-storage`, the agent killed), each of a running and of a stopped VM (whose
// disks qemu-storage-daemon reads), against a full copy of the same disk in the same round.
//
//   npx tsx bench/resume.ts [--rounds N] [--size-mib N] [--cut PCT] [--bandwidth MIBPS]
//                           [--paths shared-nothing,stopped,move-storage,stopped-storage] [--keep]
//
// Per round and path: a bootblock VM on host-a (a stopped probe VM for the stopped paths) with a
// qcow2 of N MiB (default 256) fully written attached. First a full copy (`--resumable always`, no limit):
// its wall time is the baseline (for the stopped paths the round also times the stopped VM's
// usual copy, `--resumable never`: qemu-img convert). Then the same move of a fresh VM, slowed to
// --bandwidth MiB/s (default 16) so the cut lands at --cut % (default 50) of the data disk's
// copy, read from the source QEMU's (or daemon's) job; the cut; the same command without the
// limit as the retry. Printed per round: where the cut landed, what the retry re-copied (the
// record's `disks[].resumed`: the resumed job's own counter), the retry's wall time and its
// ratio to the full copy's; then medians and worst.
//
// Everything it starts is stopped on every exit path and its folder removed, unless --keep.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { VmView } from '../src/api/schemas.js';
import type { LabStatus } from '../src/lab/lab.js';
import { hostQemuPids } from '../src/lab/lab.js';
import type { MigrationRecord } from '../src/migration/schemas.js';
import { QmpClient } from '../src/qemu/qmp.js';
import {
  FerryCli,
  MiB,
  fmt,
  machineLoad,
  median,
  oneLine,
  pidsUnder,
  runOk,
  stopOnSignals,
  table,
} from './lib/storage-util.js';

const PATHS = ['shared-nothing', 'stopped', 'move-storage', 'stopped-storage'] as const;
type PathName = (typeof PATHS)[number];

interface Row {
  round: number;
  path: PathName;
  fullWallMs: number;
  cutPct: number;
  resentMiB: number;
  diskMiB: number;
  retryWallMs: number;
  downtimeMs: number | null;
  /** The stopped paths only: the same full copy by qemu-img convert (--resumable never). */
  convertWallMs: number | null;
  load1: number;
}

const num = (name: string, def: number): number => {
  const args = process.argv.slice(2);
  const i = args.indexOf(`--${name}`);
  if (i < 0) return def;
  const n = Number(args[i + 1]);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} needs a positive number`);
  return n;
};
const log = (s: string): void => {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 23)}] ${s}\n`);
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const MOVE_MS = 300_000;

async function main(): Promise<void> {
  if (process.argv.includes('--help')) {
    process.stdout.write(
      'npx tsx bench/resume.ts [--rounds N] [--size-mib N] [--cut PCT] [--bandwidth MIBPS] ' +
        '[--paths shared-nothing,stopped,move-storage,stopped-storage] [--keep]\n',
    );
    return;
  }
  const rounds = num('rounds', 3);
  const sizeMiB = num('size-mib', 256);
  const cut = num('cut', 50) / 100;
  const bandwidth = num('bandwidth', 16);
  const keep = process.argv.includes('--keep');
  const pathsAt = process.argv.indexOf('--paths');
  const paths = pathsAt < 0 ? [...PATHS] : (process.argv[pathsAt + 1] ?? '').split(',');
  const bad = paths.find((p) => !(PATHS as readonly string[]).includes(p));
  if (bad !== undefined) throw new Error(`--paths: '${bad}' is not one of ${PATHS.join(', ')}`);
  // Short: QEMU's QMP socket paths under the lab must stay within the 108-byte limit.
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'fbrs-'));
  const labDir = path.join(root, 'lab');
  const cli = new FerryCli(labDir);
  const rows: Row[] = [];

  let tornDown = false;
  const teardown = async (): Promise<void> => {
    if (tornDown) return;
    tornDown = true;
    const r = await cli.run(['lab', 'down', '--dir', labDir], 120_000);
    if (r.code !== 0) log(`lab down exited ${r.code}: ${oneLine(r.stderr || r.stdout)}`);
    for (const p of pidsUnder(root)) {
      try {
        process.kill(p, 'SIGKILL');
        log(`killed leftover pid ${p}`);
      } catch {
        /* gone */
      }
    }
    if (keep) log(`kept ${root}`);
    else await fsp.rm(root, { recursive: true, force: true });
  };
  stopOnSignals(teardown, log);

  try {
    const up = async (): Promise<LabStatus> =>
      JSON.parse((await cli.ok(['lab', 'up', '--dir', labDir, '--hosts', '2', '--json'], 240_000)).stdout) as LabStatus;
    let status = await up();
    const dataDir = (h: string): string => path.join(labDir, 'hosts', h, 'data');
    const local = (h: string, ...p: string[]): string => path.join(dataDir(h), 'pools', 'local', ...p);
    const master = path.join(root, 'master.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', master, `${sizeMiB}M`], 60_000);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 0 ${sizeMiB}M`, master], 300_000);

    /**
     * A VM on host-a with a copy of the master disk attached: a running bootblock guest, or a
     * stopped probe VM (never started: its own small qcow2 disk, where the bootblock's is raw
     * and a raw disk makes a stopped VM's copy qemu-img's).
     */
    const newVm = async (name: string, stopped = false): Promise<VmView> => {
      const img = local('host-a', `${name}-data.qcow2`);
      await fsp.copyFile(master, img);
      const guest = stopped ? ['--guest', 'probe', '--disk', '16M'] : ['--guest', 'bootblock', '--start'];
      return cli.json<VmView>(['vm', 'new', name, '--host', 'host-a', ...guest, '--attach', img], 90_000);
    };
    const moveArgs = (p: PathName, name: string, tag: string, mode = 'always'): string[] =>
      p === 'move-storage' || p === 'stopped-storage'
        ? ['move-storage', name, '--path', local('host-a', `${name}-${tag}`), '--resumable', mode]
        : ['move-vm', name, '--to', 'host-b', '--include-storage', '--max-downtime', '5000', '--resumable', mode];
    const remove = async (name: string): Promise<void> => {
      await cli.run(['vm', 'stop', name, '--force'], 60_000);
      await cli.run(['vm', 'rm', name], 60_000);
    };

    /**
     * Waits until the data disk's copy job passed the cut; returns where it was. Read on the VM's
     * QEMU, or for a stopped VM on the daemon of move `id` (its socket appears once it opened the disks).
     */
    const awaitCut = async (vm: VmView, id: string): Promise<number> => {
      const run = vm.state === 'stopped' ? `copy-${id.slice(0, 8)}` : vm.id;
      const qmp = await QmpClient.connect(path.join(dataDir('host-a'), 'run', run, 'qmp-admin.sock'), {
        vm: vm.name,
        timeoutMs: 60_000,
      });
      const data = vm.disks[1]?.id ?? 'disk1';
      try {
        for (const until = Date.now() + MOVE_MS; Date.now() < until;) {
          const j = (await qmp.execute('query-jobs')).find(
            (x) => x.id.endsWith(`-${data}`) && !x.id.startsWith('pivot'),
          );
          if (j && j['total-progress'] > 0 && j['current-progress'] >= j['total-progress'] * cut)
            return j['current-progress'] / j['total-progress'];
          await sleep(20);
        }
        throw new Error('the copy never reached the cut');
      } finally {
        qmp.close();
      }
    };

    for (let round = 1; round <= rounds; round++) {
      for (const p of paths as PathName[]) {
        const short = { 'shared-nothing': 'sn', stopped: 'so', 'move-storage': 'st', 'stopped-storage': 'ss' };
        const tag = `${short[p]}${round}`;
        const stopped = p === 'stopped' || p === 'stopped-storage';
        log(`round ${round} ${p}: full copy`);
        const full = await newVm(`f${tag}`, stopped);
        const f = await cli.move(moveArgs(p, full.name, 'full'), MOVE_MS);
        await remove(full.name);
        let convertWallMs: number | null = null;
        if (stopped) {
          log(`round ${round} ${p}: full copy by qemu-img convert (--resumable never)`);
          const plain = await newVm(`n${tag}`, true);
          convertWallMs = (await cli.move(moveArgs(p, plain.name, 'full', 'never'), MOVE_MS)).wallMs;
          await remove(plain.name);
        }

        log(`round ${round} ${p}: cut at ${cut * 100} %`);
        const vm = await newVm(`c${tag}`, stopped);
        const id = (
          await cli.ok([...moveArgs(p, vm.name, 'cut'), '--bandwidth', String(bandwidth), '--no-wait'], 60_000)
        ).stdout.trim();
        const at = await awaitCut(vm, id);
        if (p === 'shared-nothing' || p === 'stopped') {
          for (const pid of await hostQemuPids(dataDir('host-b')))
            if ((await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes(vm.id) && pid !== vm.pid)
              process.kill(pid, 'SIGKILL');
        } else {
          const agent = status.hosts.find((h) => h.name === 'host-a')?.agentPid;
          if (!agent) throw new Error("host-a's agent has no pid");
          process.kill(agent, 'SIGKILL');
          await sleep(500);
          status = await up();
        }
        let cutRec: MigrationRecord | null = null;
        for (const until = Date.now() + 120_000; Date.now() < until;) {
          await sleep(500);
          const r = await cli.run(['migration', 'show', id, '--json'], 30_000);
          const rec = r.code === 0 ? (JSON.parse(r.stdout) as MigrationRecord) : null;
          if (rec && ['failed', 'cancelled', 'completed'].includes(rec.state)) {
            cutRec = rec;
            break;
          }
        }
        if (cutRec?.state !== 'failed') throw new Error(`the cut move ended ${cutRec?.state ?? 'never'}`);
        const retry = await cli.move(moveArgs(p, vm.name, 'cut'), MOVE_MS);
        const d = retry.record.disks.find((x) => x.id === (vm.disks[1]?.id ?? 'disk1'));
        if (!d?.resumed)
          throw new Error(`the retry did not resume: ${retry.record.events.map((e) => e.message).join(' | ')}`);
        rows.push({
          round,
          path: p,
          fullWallMs: f.wallMs,
          cutPct: at * 100,
          resentMiB: d.resumed.resentBytes / MiB,
          diskMiB: d.resumed.diskBytes / MiB,
          retryWallMs: retry.wallMs,
          downtimeMs: retry.record.downtimeMs,
          convertWallMs,
          load1: machineLoad(root).load1,
        });
        const r = rows.at(-1)!;
        log(
          `  cut at ${fmt(r.cutPct, 0)} %: re-copied ${fmt(r.resentMiB)} of ${fmt(r.diskMiB)} MiB, ` +
            `retry ${fmt(r.retryWallMs / 1000, 2)} s against ${fmt(r.fullWallMs / 1000, 2)} s for a full copy` +
            (r.convertWallMs !== null ? ` (${fmt(r.convertWallMs / 1000, 2)} s by qemu-img convert)` : ''),
        );
        await remove(vm.name);
      }
    }

    process.stdout.write(
      `\nResumable copy: a ${sizeMiB} MiB written disk, cut at ${cut * 100} % (bandwidth ${bandwidth} MiB/s ` +
        `until the cut), ${rounds} round(s)\n\n`,
    );
    process.stdout.write(
      table(
        [
          'round',
          'path',
          'cut at',
          're-copied MiB',
          'of MiB',
          're-copied %',
          'retry s',
          'full copy s',
          'ratio',
          'convert s',
          'load',
        ],
        rows.map((r) => [
          String(r.round),
          r.path,
          `${fmt(r.cutPct, 0)} %`,
          fmt(r.resentMiB),
          fmt(r.diskMiB),
          fmt((r.resentMiB / r.diskMiB) * 100, 0),
          fmt(r.retryWallMs / 1000, 2),
          fmt(r.fullWallMs / 1000, 2),
          fmt(r.retryWallMs / r.fullWallMs, 2),
          r.convertWallMs !== null ? fmt(r.convertWallMs / 1000, 2) : '—',
          fmt(r.load1, 2),
        ]),
      ) + '\n\n',
    );
    for (const p of paths as PathName[]) {
      const rs = rows.filter((r) => r.path === p);
      const pct = rs.map((r) => (r.resentMiB / r.diskMiB) * 100);
      const ratio = rs.map((r) => r.retryWallMs / r.fullWallMs);
      process.stdout.write(
        `${p}: re-copied median ${fmt(median(pct), 0)} %, worst ${fmt(Math.max(...pct), 0)} %; ` +
          `retry / full copy wall median ${fmt(median(ratio), 2)}, worst ${fmt(Math.max(...ratio), 2)}` +
          (p === 'stopped' || p === 'stopped-storage'
            ? `; full resumable copy / qemu-img convert wall median ${fmt(
                median(rs.map((r) => r.fullWallMs / (r.convertWallMs ?? r.fullWallMs))),
                2,
              )}`
            : '') +
          '\n',
      );
    }
  } finally {
    await teardown();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench/resume: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
