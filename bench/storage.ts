// Disk-copy benchmark: shared-nothing live migration (`move-vm --include-storage`, TLS on
// and off) and storage migration of a running VM (`move-storage`) against `qemu-img convert`
// of the same image, alternating in one run, on a 2-host lab on this machine.
//
//   npx tsx bench/storage.ts [--size-mib N] [--rounds N] [--sparse-gib N] [--sparse-written-mib N]
//                            [--no-sparse] [--keep] [--guest bootblock|probe]
//
// Dense case: a qcow2 of N MiB (default 512) fully written (qemu-io pattern 0x5a), attached
// to a bootblock VM (its vCPU always busy; --guest probe: an idle Linux guest instead, moved
// once its workload beats, after its boot). Per round: qemu-img convert (default cache modes)
// → shared-nothing A→B with TLS → qemu-img convert with -t none -T none (O_DIRECT both ends,
// as Ferry's disks) → move-storage on B → shared-nothing B→A with TLS off on both hosts (even
// rounds: without TLS A→B, with TLS B→A).
// Sparse case (as many rounds): a 10 GiB qcow2 with 100 MiB written at 1 GiB: qemu-img convert
// (both cache modes), shared nothing with TLS, move-storage, shared nothing without TLS;
// elapsed and the allocated size (actual-size) of each copy. The summary gives each Ferry
// path's copy ratio against qemu-img convert of the same round, median and worst, and the load.
//
// MiB/s = data written in the image / elapsed. For Ferry, "copy" is the disk-copy phase from
// the record's events ("copying N disk(s)" → "every disk is mirrored" / "all copies ready";
// it also copies the bootblock's 1 MiB boot disk); "move" is the record's totalMs (for shared
// nothing it includes preparing the destination, the memory copy and the switch-over).
//
// Everything it starts (lab agents and QEMUs) is stopped on every exit path and the temp
// folder removed, unless --keep.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { MigrationRecord } from '../src/migration/schemas.js';
import type { VmView } from '../src/api/schemas.js';
import type { LabStatus } from '../src/lab/lab.js';
import {
  FerryCli,
  MiB,
  fmt,
  imgFacts,
  machineLoad,
  median,
  oneLine,
  phasesOf,
  pidsUnder,
  runOk,
  stopOnSignals,
  table,
} from './lib/storage-util.js';
import { HeartbeatTail } from './lib/heartbeat-tail.js';

type PathName = 'qemu-img' | 'qemu-img-direct' | 'shared-nothing-tls' | 'shared-nothing-notls' | 'move-storage';
type CaseName = 'dense' | 'sparse';

interface Sample {
  case: CaseName;
  round: number;
  path: PathName;
  direction: string | null;
  ok: boolean;
  error: string | null;
  /** Data written in the image (what has to be copied). */
  dataMiB: number;
  /** qemu-img: its run time. Ferry: the CLI call's wall time. */
  wallMs: number | null;
  /** Ferry: the record's totalMs; qemu-img: = wallMs. */
  totalMs: number | null;
  /** Ferry: the disk-copy phase from the events; qemu-img: = wallMs. */
  copyMs: number | null;
  beforeCopyMs?: number | null;
  afterCopyMs?: number | null;
  mibpsCopy: number | null;
  mibpsTotal: number | null;
  /** Ferry: the mirror's total for the benchmarked disk, and all disks of the move. */
  mirrorBytesTotal?: number | null;
  allDisksBytesTotal?: number | null;
  destActualMiB: number | null;
  destVirtualGiB: number | null;
  downtimeMs?: number | null;
  migrationId?: string;
  load1: number;
  foreignQemus: number;
}

interface Args {
  sizeMiB: number;
  rounds: number;
  sparseGiB: number;
  sparseWrittenMiB: number;
  sparse: boolean;
  keep: boolean;
  /** The VM the disk is attached to: bootblock (its vCPU always busy) or probe (an idle Linux). */
  guest: 'bootblock' | 'probe';
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    sizeMiB: 512,
    rounds: 2,
    sparseGiB: 10,
    sparseWrittenMiB: 100,
    sparse: true,
    keep: false,
    guest: 'bootblock',
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const name = arg.includes('=') ? arg.slice(0, arg.indexOf('=')) : arg;
    const val = (): number => {
      const v = arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : argv[++i];
      const n = Number(v);
      if (v === undefined || !Number.isInteger(n) || n < 1) throw new Error(`${name} needs a positive integer`);
      return n;
    };
    if (name === '--size-mib') a.sizeMiB = val();
    else if (name === '--rounds') a.rounds = val();
    else if (name === '--sparse-gib') a.sparseGiB = val();
    else if (name === '--sparse-written-mib') a.sparseWrittenMiB = val();
    else if (name === '--no-sparse') a.sparse = false;
    else if (name === '--keep') a.keep = true;
    else if (name === '--guest') {
      const g = arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : argv[++i];
      if (g !== 'bootblock' && g !== 'probe') throw new Error('--guest is bootblock or probe');
      a.guest = g;
    } else if (name === '--help' || name === '-h') {
      process.stdout.write(
        'npx tsx bench/storage.ts ' +
          '[--size-mib N] [--rounds N] [--sparse-gib N] [--sparse-written-mib N] [--no-sparse] [--keep] ' +
          '[--guest bootblock|probe]\n',
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${arg}`);
  }
  if (a.sparseWrittenMiB >= a.sparseGiB * 1024 - 1024)
    throw new Error('--sparse-written-mib must fit after the 1 GiB offset');
  return a;
}

const log = (s: string): void => {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 23)}] ${s}\n`);
};
const MOVE_TIMEOUT_MS = 300_000;
const IMG_TIMEOUT_MS = 300_000;

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  // Short: QEMU's QMP socket paths under the lab must stay within the 108-byte UNIX socket limit.
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'fbst-'));
  const labDir = path.join(root, 'lab');
  const work = path.join(root, 'work');
  await fsp.mkdir(work);
  const cli = new FerryCli(labDir);
  const samples: Sample[] = [];
  const notes: string[] = [];
  const t0 = performance.now();

  let tornDown = false;
  const teardown = async (): Promise<void> => {
    if (tornDown) return;
    tornDown = true;
    log('tearing down the lab');
    const r = await cli.run(['lab', 'down', '--dir', labDir], 120_000);
    if (r.code !== 0) log(`lab down exited ${r.code}: ${oneLine(r.stderr || r.stdout)}`);
    // Whatever still runs from our folder (a QEMU the lab lost track of): ours, by pid.
    let left = pidsUnder(root);
    for (const p of left) {
      try {
        process.kill(p, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
    for (let i = 0; i < 30 && left.length; i++) {
      await new Promise((res) => setTimeout(res, 100));
      left = pidsUnder(root);
    }
    for (const p of left) {
      try {
        process.kill(p, 'SIGKILL');
        log(`killed leftover pid ${p}`);
      } catch {
        /* gone */
      }
    }
    if (args.keep) log(`kept ${root}`);
    else
      await fsp
        .rm(root, { recursive: true, force: true })
        .catch((err: unknown) => log(`cannot remove ${root}: ${String(err)}`));
  };
  const unlisten = stopOnSignals(teardown, log);

  try {
    log(`lab up in ${labDir}`);
    const status = JSON.parse(
      (await cli.ok(['lab', 'up', '--dir', labDir, '--hosts', '2', '--json'], 180_000)).stdout,
    ) as LabStatus;
    const dataDir = (h: string): string =>
      status.hosts.find((x) => x.name === h)?.dataDir ?? path.join(labDir, 'hosts', h, 'data');
    const local = (h: string, ...p: string[]): string => path.join(dataDir(h), 'pools', 'local', ...p);
    const show = (name: string): Promise<VmView> => cli.json<VmView>(['vm', 'show', name], 30_000);
    const other = (h: string): string => (h === 'host-a' ? 'host-b' : 'host-a');

    /** Runs one measurement; a failure is recorded with its reason and the run goes on. */
    const attempt = async (
      base: Pick<Sample, 'case' | 'round' | 'path' | 'dataMiB'>,
      fn: (s: Sample) => Promise<void>,
    ): Promise<Sample> => {
      const s: Sample = {
        ...base,
        direction: null,
        ok: false,
        error: null,
        wallMs: null,
        totalMs: null,
        copyMs: null,
        mibpsCopy: null,
        mibpsTotal: null,
        destActualMiB: null,
        destVirtualGiB: null,
        ...machineLoad(root),
      };
      log(`${base.case} r${base.round} ${base.path}…`);
      try {
        await fn(s);
        s.ok = true;
        if (s.copyMs) s.mibpsCopy = s.dataMiB / (s.copyMs / 1000);
        if (s.totalMs) s.mibpsTotal = s.dataMiB / (s.totalMs / 1000);
        log(
          `  ${base.path}: copy ${fmt(s.copyMs, 0)} ms (${fmt(s.mibpsCopy)} MiB/s), ` +
            `total ${fmt(s.totalMs, 0)} ms, dest ${fmt(s.destActualMiB)} MiB allocated`,
        );
      } catch (err) {
        s.error = oneLine(err instanceof Error ? err.message : String(err), 600);
        log(`  ${base.path} FAILED: ${s.error}`);
      }
      samples.push(s);
      return s;
    };

    const convert = (c: CaseName, round: number, dataMiB: number, src: string, direct: boolean): Promise<Sample> =>
      attempt({ case: c, round, path: direct ? 'qemu-img-direct' : 'qemu-img', dataMiB }, async (s) => {
        const dst = path.join(work, `convert-${c}-${round}${direct ? '-direct' : ''}.qcow2`);
        try {
          const r = await runOk(
            'qemu-img',
            ['convert', ...(direct ? ['-t', 'none', '-T', 'none'] : []), '-f', 'qcow2', '-O', 'qcow2', src, dst],
            IMG_TIMEOUT_MS,
          );
          s.wallMs = s.totalMs = s.copyMs = r.ms;
          s.direction = 'local → local';
          const f = await imgFacts(dst);
          s.destActualMiB = f.actualBytes / MiB;
          s.destVirtualGiB = f.virtualBytes / 1024 ** 3;
        } finally {
          await fsp.rm(dst, { force: true });
        }
      });

    /** Fills a Ferry sample from a completed record; `file` is the benchmarked disk's source basename. */
    const fromRecord = async (s: Sample, record: MigrationRecord, wallMs: number, file: string): Promise<void> => {
      const ph = phasesOf(record);
      s.migrationId = record.id;
      s.direction = `${record.source} → ${record.destination}`;
      s.wallMs = wallMs;
      s.totalMs = record.totalMs;
      s.copyMs = ph.copyMs;
      s.beforeCopyMs = ph.beforeCopyMs;
      s.afterCopyMs = ph.afterCopyMs;
      s.downtimeMs = record.downtimeMs;
      const d = record.disks.find((x) => path.basename(x.source) === file);
      s.mirrorBytesTotal = d?.bytesTotal ?? null;
      s.allDisksBytesTotal = record.disks.reduce((n, x) => n + x.bytesTotal, 0);
      if (d) {
        const f = await imgFacts(d.destination);
        s.destActualMiB = f.actualBytes / MiB;
        s.destVirtualGiB = f.virtualBytes / 1024 ** 3;
      }
      if (ph.copyMs === null)
        throw new Error(
          `no copy phase in the events of ${record.id}: ${record.events.map((e) => e.message).join(' | ')}`,
        );
    };

    const sharedNothing = (
      c: CaseName,
      round: number,
      dataMiB: number,
      vm: string,
      file: string,
      tls: boolean,
    ): Promise<Sample> =>
      attempt({ case: c, round, path: tls ? 'shared-nothing-tls' : 'shared-nothing-notls', dataMiB }, async (s) => {
        const from = (await show(vm)).host;
        const to = other(from);
        const hosts = [from, to];
        if (!tls) for (const h of hosts) await cli.ok(['host', 'set', h, '--tls', 'off'], 30_000);
        try {
          const { record, wallMs } = await cli.move(
            ['move-vm', vm, '--to', to, '--include-storage', '--max-downtime', '5000'],
            MOVE_TIMEOUT_MS,
          );
          await fromRecord(s, record, wallMs, file);
          if (!record.events.some((e) => (tls ? /\(TLS,/ : /\(no TLS,/).test(e.message)))
            notes.push(`${record.id}: the record does not say TLS ${tls ? 'on' : 'off'}`);
        } finally {
          if (!tls) {
            for (const h of hosts) {
              const r = await cli.run(['host', 'set', h, '--tls', 'on'], 30_000);
              if (r.code !== 0) log(`cannot turn TLS back on for ${h}: ${oneLine(r.stderr)}`);
            }
          }
        }
      });

    const moveStorage = (c: CaseName, round: number, dataMiB: number, vm: string, file: string): Promise<Sample> =>
      attempt({ case: c, round, path: 'move-storage', dataMiB }, async (s) => {
        const v = await show(vm);
        if (v.state !== 'running') throw new Error(`VM ${vm} is ${v.state}, not running`);
        const to = local(v.host, `${vm}-ms${round}-${Date.now().toString(36)}`);
        const { record, wallMs } = await cli.move(['move-storage', vm, '--path', to], MOVE_TIMEOUT_MS);
        await fromRecord(s, record, wallMs, file);
      });

    /**
     * Waits for a probe guest's workload to beat for a second: a Linux boot under TCG takes a
     * core for seconds, and a copy measured beside it measures the boot (the first path of every
     * round did, until 2026-12-05).
     */
    const bootedProbe = async (view: VmView): Promise<void> => {
      const tail = new HeartbeatTail(view.name, 50);
      tail.add(path.join(dataDir(view.host), 'run', view.id, 'serial.log'), true);
      tail.start();
      try {
        await tail.waitBeats(0, 50, 120_000);
      } finally {
        tail.stop();
      }
    };
    /** Odd rounds move with TLS first, even rounds without first: neither setting always goes first. */
    const tlsOrder = (round: number): [boolean, boolean] => (round % 2 === 1 ? [true, false] : [false, true]);

    /** A VM (--guest) on host-a with a copy of `master` attached; removed (with its disks) after `fn`. */
    /** (If the VM cannot be made, each of `planned` is recorded as failed with the reason.) */
    const withVm = async (
      vm: string,
      master: string,
      file: string,
      planned: Array<Pick<Sample, 'case' | 'round' | 'path' | 'dataMiB'>>,
      fn: () => Promise<void>,
    ): Promise<void> => {
      const img = local('host-a', file);
      try {
        await fsp.copyFile(master, img);
        const view = await cli.json<VmView>(
          ['vm', 'new', vm, '--host', 'host-a', '--guest', args.guest, '--attach', img, '--start'],
          90_000,
        );
        if (args.guest === 'probe') await bootedProbe(view);
      } catch (err) {
        const msg = oneLine(err instanceof Error ? err.message : String(err));
        log(`cannot create VM ${vm}: ${msg}`);
        for (const p of planned) await attempt(p, () => Promise.reject(new Error(`VM ${vm} not created: ${msg}`)));
        await cli.run(['vm', 'rm', vm], 60_000);
        await fsp.rm(img, { force: true });
        return;
      }
      try {
        await fn();
      } finally {
        const st = await cli.run(['vm', 'stop', vm, '--force'], 60_000);
        if (st.code !== 0) log(`vm stop ${vm}: ${oneLine(st.stderr)}`);
        const rm = await cli.run(['vm', 'rm', vm], 60_000);
        if (rm.code !== 0) log(`vm rm ${vm}: ${oneLine(rm.stderr)}`);
        await fsp.rm(img, { force: true });
      }
    };

    // Dense case.
    const dense = path.join(work, 'dense.qcow2');
    log(`dense image: ${args.sizeMiB} MiB written`);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', dense, `${args.sizeMiB}M`], 30_000);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 0 ${args.sizeMiB}M`, dense], IMG_TIMEOUT_MS);
    for (let r = 1; r <= args.rounds; r++) {
      await convert('dense', r, args.sizeMiB, dense, false);
      const vm = `dense${r}`;
      const file = `dense${r}.qcow2`;
      const planned = (['shared-nothing-tls', 'qemu-img-direct', 'move-storage', 'shared-nothing-notls'] as const).map(
        (p) => ({ case: 'dense' as const, round: r, path: p, dataMiB: args.sizeMiB }),
      );
      const [first, second] = tlsOrder(r);
      await withVm(vm, dense, file, planned, async () => {
        await sharedNothing('dense', r, args.sizeMiB, vm, file, first);
        await convert('dense', r, args.sizeMiB, dense, true);
        await moveStorage('dense', r, args.sizeMiB, vm, file);
        await sharedNothing('dense', r, args.sizeMiB, vm, file, second);
      });
    }
    await fsp.rm(dense, { force: true });

    // Sparse case.
    if (args.sparse) {
      const sparse = path.join(work, 'sparse.qcow2');
      const w = args.sparseWrittenMiB;
      log(`sparse image: ${args.sparseGiB} GiB, ${w} MiB written at 1 GiB`);
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', sparse, `${args.sparseGiB}G`], 30_000);
      await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 1G ${w}M`, sparse], IMG_TIMEOUT_MS);
      for (let r = 1; r <= args.rounds; r++) {
        await convert('sparse', r, w, sparse, false);
        await convert('sparse', r, w, sparse, true);
        const vm = `sparse${r}`;
        const file = `sparse${r}.qcow2`;
        const planned = (['shared-nothing-tls', 'move-storage', 'shared-nothing-notls'] as const).map((p) => ({
          case: 'sparse' as const,
          round: r,
          path: p,
          dataMiB: w,
        }));
        const [first, second] = tlsOrder(r);
        await withVm(vm, sparse, file, planned, async () => {
          await sharedNothing('sparse', r, w, vm, file, first);
          await moveStorage('sparse', r, w, vm, file);
          await sharedNothing('sparse', r, w, vm, file, second);
        });
      }
      await fsp.rm(sparse, { force: true });
    }
  } catch (err) {
    log(`run stopped: ${err instanceof Error ? err.message : String(err)}`);
    notes.push(`run stopped early: ${oneLine(err instanceof Error ? err.message : String(err))}`);
    process.exitCode = 1;
  } finally {
    await teardown();
    unlisten();
  }

  report(args, samples, notes, performance.now() - t0);
  if (samples.some((s) => !s.ok)) process.exitCode = 1;
}

function report(args: Args, samples: Sample[], notes: string[], elapsedMs: number): void {
  const out: string[] = [];
  const dense = samples.filter((s) => s.case === 'dense');
  const baseOf = (round: number, p: PathName): number | null =>
    dense.find((s) => s.round === round && s.path === p && s.ok)?.mibpsCopy ?? null;
  const ratio = (a: number | null, b: number | null): string => (a && b ? `${(a / b).toFixed(2)}×` : '—');

  out.push(
    `\nDense: ${args.sizeMiB} MiB qcow2, fully written; ${args.rounds} round(s); ` +
      `${os.cpus().length} cores, QEMU TCG; the disk attached to a ${args.guest} guest ` +
      `(${args.guest === 'bootblock' ? 'its vCPU always busy' : 'an idle Linux'}); ` +
      `MiB/s = ${args.sizeMiB} MiB / elapsed`,
  );
  out.push(
    'copy = disk-copy phase (Ferry: from the record events; qemu-img: its run time); ' +
      'move = record totalMs (incl. prepare, memory, switch-over);',
  );
  out.push('cli = wall time of the bin/ferry call (adds CLI start-up and polling)');
  out.push(
    "vs img = Ferry copy MiB/s ÷ the same round's qemu-img convert (default caches); " +
      'vs direct = ÷ qemu-img -t none -T none\n',
  );
  out.push(
    table(
      [
        'round',
        'path',
        'direction',
        'copy s',
        'copy MiB/s',
        'move s',
        'move MiB/s',
        'cli s',
        'vs img',
        'vs direct',
        'load1',
        'error',
      ],
      dense.map((s) => {
        const ferry = !s.path.startsWith('qemu-img');
        return [
          String(s.round),
          s.path,
          s.direction ?? '',
          fmt(s.copyMs && s.copyMs / 1000, 2),
          fmt(s.mibpsCopy),
          fmt(s.totalMs && s.totalMs / 1000, 2),
          fmt(s.mibpsTotal),
          ferry ? fmt(s.wallMs && s.wallMs / 1000, 2) : '',
          ferry ? ratio(s.mibpsCopy, baseOf(s.round, 'qemu-img')) : '',
          ferry ? ratio(s.mibpsCopy, baseOf(s.round, 'qemu-img-direct')) : '',
          fmt(s.load1, 2),
          s.ok ? '' : (s.error ?? 'failed').slice(0, 80),
        ];
      }),
    ),
  );
  const paths: PathName[] = [
    'qemu-img',
    'qemu-img-direct',
    'shared-nothing-tls',
    'shared-nothing-notls',
    'move-storage',
  ];
  const med = (p: PathName, k: 'mibpsCopy' | 'mibpsTotal'): number | null =>
    median(dense.filter((s) => s.path === p && s.ok && s[k] !== null).map((s) => s[k]!));
  out.push('\nDense, medians over rounds:\n');
  out.push(
    table(
      ['path', 'copy MiB/s', 'move MiB/s', 'copy vs img', 'copy vs direct', 'ok/runs'],
      paths.map((p) => [
        p,
        fmt(med(p, 'mibpsCopy')),
        fmt(med(p, 'mibpsTotal')),
        ratio(med(p, 'mibpsCopy'), med('qemu-img', 'mibpsCopy')),
        ratio(med(p, 'mibpsCopy'), med('qemu-img-direct', 'mibpsCopy')),
        `${dense.filter((s) => s.path === p && s.ok).length}/${dense.filter((s) => s.path === p).length}`,
      ]),
    ),
  );

  const sparse = samples.filter((s) => s.case === 'sparse');
  if (sparse.length) {
    out.push(`\nSparse: ${args.sparseGiB} GiB qcow2, ${args.sparseWrittenMiB} MiB written at 1 GiB\n`);
    out.push(
      table(
        [
          'round',
          'path',
          'direction',
          'copy s',
          'move s',
          'dest allocated MiB',
          'dest virtual GiB',
          'mirror total MiB',
          'error',
        ],
        sparse.map((s) => [
          String(s.round),
          s.path,
          s.direction ?? '',
          fmt(s.copyMs && s.copyMs / 1000, 2),
          fmt(s.totalMs && s.totalMs / 1000, 2),
          fmt(s.destActualMiB),
          fmt(s.destVirtualGiB, 0),
          s.mirrorBytesTotal != null ? fmt(s.mirrorBytesTotal / MiB) : '',
          s.ok ? '' : (s.error ?? 'failed').slice(0, 80),
        ]),
      ),
    );
  }
  // The acceptance figure: Ferry's copy time against qemu-img convert's on the same image in
  // the same round (ratio = convert s ÷ Ferry copy s; ≥ 1 is faster), median and worst.
  const ratios = (c: CaseName, p: PathName, base: PathName): number[] =>
    samples
      .filter((s) => s.case === c && s.path === p && s.ok && s.copyMs)
      .map((s) => {
        const b = samples.find((x) => x.case === c && x.round === s.round && x.path === base && x.ok);
        return b?.copyMs ? b.copyMs / s.copyMs! : null;
      })
      .filter((x): x is number => x !== null);
  const x = (v: number | null | undefined): string => (v == null ? '—' : `${v.toFixed(2)}×`);
  const worst = (xs: number[], pick: (...v: number[]) => number): number | null => (xs.length ? pick(...xs) : null);
  const ferryPaths: PathName[] = ['shared-nothing-tls', 'shared-nothing-notls', 'move-storage'];
  const loads = samples.map((s) => s.load1);
  out.push(
    `\nCopy ratio vs qemu-img convert (convert s ÷ Ferry copy s, same round), median (worst) over rounds; ` +
      `load1 during the run: median ${fmt(median(loads), 2)}, max ${fmt(worst(loads, Math.max), 2)}\n`,
  );
  out.push(
    table(
      ['case', 'path', 'vs img', 'vs direct', 'copy s median (worst)', 'ok/runs'],
      (['dense', 'sparse'] as const).flatMap((c) =>
        ferryPaths
          .filter((p) => samples.some((s) => s.case === c && s.path === p))
          .map((p) => {
            const img = ratios(c, p, 'qemu-img');
            const dir = ratios(c, p, 'qemu-img-direct');
            const copies = samples
              .filter((s) => s.case === c && s.path === p && s.ok && s.copyMs)
              .map((s) => s.copyMs!);
            const runs = samples.filter((s) => s.case === c && s.path === p);
            return [
              c,
              p,
              `${x(median(img))} (${x(worst(img, Math.min))})`,
              `${x(median(dir))} (${x(worst(dir, Math.min))})`,
              `${fmt((median(copies) ?? NaN) / 1000, 2)} (${fmt((worst(copies, Math.max) ?? NaN) / 1000, 2)})`,
              `${runs.filter((s) => s.ok).length}/${runs.length}`,
            ];
          }),
      ),
    ),
  );
  const load = samples.map((s) => s.foreignQemus);
  if (load.some((n) => n > 0))
    out.push(
      `\nNote: other QEMUs were running on this machine during ${load.filter((n) => n > 0).length} ` +
        `of ${samples.length} measurements (see foreignQemus/load1 in the JSON).`,
    );
  for (const n of notes) out.push(`Note: ${n}`);
  out.push(`\nRun took ${(elapsedMs / 1000).toFixed(0)} s.\n`);
  process.stdout.write(`${out.join('\n')}\n`);
  const machine = { cores: os.cpus().length, accel: 'lab default (TCG here)' };
  process.stdout.write(`${JSON.stringify({ args, machine, samples, notes }, null, 2)}\n`);
}

void main().catch((err: unknown) => {
  process.stderr.write(`bench/storage: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
