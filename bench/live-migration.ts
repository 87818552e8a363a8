// Live migration benchmark: the same probe VM moved by `ferry move-vm` and by a minimal
// raw-QMP script (QEMU-NOTES §A), each with TLS on and off (the raw script's TLS: a throw-away
// CA, the same GnuTLS priority, lib/raw-tls.ts), alternating, several rounds, for an idle
// probe and a dirtying one (64 MiB at 16 MiB/s). Ratios are like with like (TLS ÷ raw TLS).
// Reports wall time, QEMU's downtime and the guest-observed heartbeat gap (host arrival
// times of `ferry-hb` serial lines).
// Workload `postcopy` (Ferry only): the dirtying probe moved with a link cap below its dirty
// rate and --allow-postcopy, so every move switches to post-copy; reports the record's
// post-copy figures (QEMU's downtime, the guest's pause across both hosts) and the heartbeat gap.
//
//   npx tsx bench/live-migration.ts [--rounds N] [--warmup N] [--boots N] [--workloads idle,dirty,postcopy]
//     [--raw-downtime-limit MS] [--settle-ms MS] [--keep]
// (--warmup, default 1: rounds of the same moves first, on both paths, left out of the figures.
// --boots, default 1: both guests are booted this many times, each boot followed by the warm-up
// and --rounds rounds; a guest's last pass depends on where its boot put its memory, so one boot
// per path compares two layouts as much as two paths: docs/performance.md.
// --settle-ms, default 2500: every move starts at least this long after the previous one ended
// (its source QEMU gone). On a host that is itself a VM with free page reporting, memory freed
// ~2 s earlier has gone back to the hypervisor, and a destination QEMU faulting it in again
// receives several times slower; a move right after another gets the memory its source freed.
// Moving ~2 s apart, the two paths got one or the other by the order of the run, not by what
// they do: docs/performance.md § The destination's memory.)
//
// The raw path uses QEMU's default downtime limit (300 ms) unless --raw-downtime-limit;
// Ferry's policy starts at 20 ms and raises it only when the copy does not converge.
//
// Everything it starts (the lab's agents and QEMUs, the raw QEMUs) is stopped on every
// exit path; the temp folder is removed unless --keep.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { detectAccelerator, type Accelerator } from '../src/qemu/accel.js';
import { createVm } from '../src/vm/lifecycle.js';
import { probeVm } from '../src/vm/guests.js';
import { parseVmSpec, type VmSpec } from '../src/vm/spec.js';
import { probeGuestFiles } from '../guest/paths.js';
import { HeartbeatTail } from './lib/heartbeat-tail.js';
import { FerryLab, ferry, phasesOf, stepsOf, type FerryPhases } from './lib/ferry-path.js';
import { RawVm, killAllRaw, RAW_DOWNTIME_LIMIT_MS } from './lib/raw-path.js';
import { makeRawTlsDir } from './lib/raw-tls.js';
import { fmt, max, median, medMax, table } from './lib/stats.js';

type Workload = 'idle' | 'dirty';
type PathName = 'ferry-tls' | 'ferry-notls' | 'raw-tls' | 'raw';

interface Sample {
  workload: Workload;
  round: number;
  path: PathName;
  direction: string;
  ok: boolean;
  error: string | null;
  /** After the move: no heartbeat, a kernel oops or a reboot of the guest (null = it ran on). */
  guestTrouble: string | null;
  /** Ferry: the move-vm command's wall time. raw: migrate sequence start → dest running. */
  wallMs: number | null;
  /** Ferry: the record's totalMs. */
  totalMs: number | null;
  downtimeMs: number | null;
  /**
   * The bytes sent with the guest paused, what the downtime was spent on: Ferry's record's
   * pausedBytes; raw, QEMU's `ram.downtime-bytes` (the same count without multifd).
   */
  pausedBytes?: number | null;
  downtimeLimitMs: number | null;
  hbGapMs: number | null;
  hbGapSeqs: string | null;
  hbLostSeqs: number | null;
  passes: number | null;
  bytesTransferred: number | null;
  /** raw: starting the destination QEMU (not in wallMs); quitting the source (not in wallMs). */
  destSpawnMs?: number;
  sourceQuitMs?: number;
  phases?: FerryPhases | null;
  /** Ferry: each step's time from the record (`source:compare`, `destination:qemu`, ...), ms. */
  steps?: Record<string, number> | null;
  /** Ferry: the record said downtimeMs 0, read before QEMU 7.2 filled it in (counted as unknown). */
  downtimeZeroInRecord?: boolean;
  /** raw: the first `completed` reply had total-time/downtime 0 and was asked again. */
  statsRequeried?: boolean;
  /** From the end of the previous move (of either path; its source QEMU gone) to this move's start. */
  idleBeforeMs: number | null;
  /** Machine load at the start of the move: 1-min load average, QEMUs not started by this run. */
  load1: number;
  foreignQemus: number;
}

const WORKLOADS: Record<Workload, { dirty: string | null; describe: string }> = {
  idle: { dirty: null, describe: 'probe, default disk writer, no memory dirtier' },
  dirty: { dirty: '64@16', describe: 'probe, default disk writer, dirtier 64 MiB @ 16 MiB/s' },
};

/** 64 MiB dirtied at 16 MiB/s against an 8 MiB/s cap: pre-copy cannot converge at 50 ms. */
const POSTCOPY = {
  dirty: '64@16',
  describe: 'probe, dirtier 64 MiB @ 16 MiB/s, --bandwidth 8 --max-downtime 50 --finish-within 5 --allow-postcopy',
  args: ['--bandwidth', '8', '--max-downtime', '50', '--finish-within', '5', '--allow-postcopy'],
};
/** QEMU 7.2 runs as ferry-qemu and gets userfaultfd (post-copy) only with this sysctl. */
const USERFAULTFD_SYSCTL = '/proc/sys/vm/unprivileged_userfaultfd';

interface PostcopySample {
  round: number;
  direction: string;
  ok: boolean;
  error: string | null;
  guestTrouble: string | null;
  wallMs: number;
  totalMs: number | null;
  afterMs: number | null;
  downtimeMs: number | null;
  guestPauseMs: number | null;
  postcopyMs: number | null;
  postcopyMiB: number | null;
  hbGapMs: number | null;
}

const GAP_BEFORE_MS = 300;
/** How long to wait for a heartbeat: 15 s, or 3 s once a guest has been silent for 10 s (dead: don't stall the run). */
const waitMs = (tail: HeartbeatTail): number =>
  performance.now() - (tail.beats.at(-1)?.t ?? performance.now()) > 10_000 ? 3000 : 15_000;
const GAP_AFTER_MS = 1000;
/** Beyond free page reporting's 2 s delay (Linux's PAGE_REPORTING_DELAY): see --settle-ms above. */
const DEFAULT_SETTLE_MS = 2500;

function parseArgs(argv: string[]): {
  rounds: number;
  workloads: Workload[];
  postcopy: boolean;
  keep: boolean;
  rawDowntimeLimitMs: number;
  warmup: number;
  boots: number;
  settleMs: number;
} {
  let rounds = 3;
  let warmup = 1;
  let boots = 1;
  let settleMs = DEFAULT_SETTLE_MS;
  let rawDowntimeLimitMs = RAW_DOWNTIME_LIMIT_MS;
  let workloads: Workload[] = ['idle', 'dirty'];
  let keep = false;
  let postcopy = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const is = (name: string): boolean => a === name || a.startsWith(`${name}=`);
    /** The option's value as a whole number from `lo` to `hi` (`unit` names it in the error). */
    const int = (name: string, lo: number, hi: number, unit = ''): number => {
      const n = Number(val());
      if (!Number.isInteger(n) || n < lo || n > hi)
        throw new Error(`${name} must be an integer${unit ? ` number of ${unit}` : ''} from ${lo} to ${hi}`);
      return n;
    };
    if (is('--rounds')) rounds = int('--rounds', 1, 50);
    else if (is('--workloads')) {
      const w = val()
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      if (!w.length || w.some((x) => x !== 'idle' && x !== 'dirty' && x !== 'postcopy'))
        throw new Error('--workloads takes a list of idle, dirty and postcopy');
      postcopy = w.includes('postcopy');
      workloads = w.filter((x) => x !== 'postcopy') as Workload[];
    } else if (is('--raw-downtime-limit')) rawDowntimeLimitMs = int('--raw-downtime-limit', 1, 60_000, 'ms');
    else if (is('--warmup')) warmup = int('--warmup', 0, 10);
    else if (is('--boots')) boots = int('--boots', 1, 10);
    else if (is('--settle-ms')) settleMs = int('--settle-ms', 0, 60_000, 'ms');
    else if (a === '--keep') keep = true;
    else if (a === '--help' || a === '-h') {
      process.stdout.write(
        'usage: npx tsx bench/live-migration.ts ' +
          '[--rounds N] [--warmup N] [--boots N] [--workloads idle,dirty,postcopy] [--raw-downtime-limit MS] ' +
          '[--settle-ms MS] [--keep]\n',
      );
      process.exit(0);
    } else
      throw new Error(
        `unknown argument '${a}'; use --rounds N, --warmup N, --boots N, --workloads idle,dirty,postcopy, ` +
          '--raw-downtime-limit MS, --settle-ms MS or --keep',
      );
  }
  return { rounds, workloads, postcopy, keep, rawDowntimeLimitMs, warmup, boots, settleMs };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const log = (s: string): void => {
  process.stderr.write(`[${new Date().toISOString().slice(11, 23)}] ${s}\n`);
};
const msg = (e: unknown): string => (e instanceof Error ? e.message : String(e));

function foreignQemuCount(ownDir: string): number {
  let n = 0;
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8');
      if (cmd.includes('qemu-system') && !cmd.includes(ownDir)) n++;
    } catch {
      /* gone */
    }
  }
  return n;
}

/**
 * Waits until the heartbeat has run again after a move and the gap window is over; says
 * what went wrong with the guest (no heartbeat, a kernel oops, a reboot), else null.
 */
async function settle(tail: HeartbeatTail, t0: number, tEnd: number): Promise<string | null> {
  let note: string | null = null;
  try {
    await tail.waitBeatsAfter(tEnd, 25, waitMs(tail));
  } catch (e) {
    note = msg(e);
  }
  const left = tEnd + GAP_AFTER_MS + 20 - performance.now();
  if (left > 0) await sleep(left);
  const trouble = tail.trouble(t0, performance.now());
  return [note, trouble].filter(Boolean).join('; ') || null;
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  if (!probeGuestFiles()) throw new Error('the probe guest is not built; run scripts/setup');
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-bench-'));
  const lab = new FerryLab(dir);
  const samples: Sample[] = [];
  /** Moves of the warm-up rounds (round ≤ 0): logged, left out of every figure. */
  const warmups: Sample[] = [];
  const postcopySamples: PostcopySample[] = [];
  const notable: Array<{ workload: Workload; vm: string; line: string }> = [];
  const tails: HeartbeatTail[] = [];
  const cliFloor: Partial<Record<Workload, CliFloor>> = {};
  let labStarted = false;
  let cleaned = false;

  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    for (const t of tails) t.stop();
    await killAllRaw(true);
    if (labStarted || fs.existsSync(path.join(lab.lab, 'lab.json')))
      log(await lab.down().catch((e: unknown) => `lab down failed: ${msg(e)}`));
    if (!opts.keep) await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    else log(`kept ${dir}`);
    await killAllRaw(true);
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      log(`${sig}: cleaning up`);
      void cleanup().finally(() => process.exit(130));
    });
  }

  const loadStart = os.loadavg();
  const started = Date.now();
  let accel: Accelerator = 'tcg';
  // The raw path's TLS material (a throw-away CA), made once like Ferry's host certificates.
  const rawTlsDir = path.join(dir, 'raw-tls');
  try {
    await makeRawTlsDir(rawTlsDir);
    accel = (await detectAccelerator()).accel;
    log(
      `temp dir ${dir}; accelerator ${accel}; ${os.cpus().length} cpus; ` +
        `load ${loadStart.map((x) => x.toFixed(2)).join(' ')}`,
    );
    await lab.up();
    labStarted = true;
    log('lab up (host-a, host-b)');

    for (const wl of opts.workloads) {
      await runWorkload(wl);
    }
    if (opts.postcopy) await runPostcopy();
  } finally {
    await cleanup();
  }

  async function runPostcopy(): Promise<void> {
    const name = 'bench-postcopy';
    log(`workload postcopy: ${POSTCOPY.describe}`);
    const tail = new HeartbeatTail(`ferry ${name}`);
    tails.push(tail);
    const was = await fsp.readFile(USERFAULTFD_SYSCTL, 'utf8').catch(() => null);
    let created = false;
    try {
      if (was === null) throw new Error(`${USERFAULTFD_SYSCTL} is missing: QEMU cannot do post-copy here`);
      await fsp.writeFile(USERFAULTFD_SYSCTL, '1');
      const vm = await lab.newProbe(name, POSTCOPY.dirty);
      created = true;
      for (const h of ['host-a', 'host-b']) tail.add(lab.serialLog(h, vm.id), true);
      tail.start();
      await tail.waitBeats(0, 25, 60_000);
      await sleep(6000); // the dirtier touches its whole working set
      let host = vm.host;
      for (let round = 1; round <= opts.rounds; round++) {
        const to = host === 'host-a' ? 'host-b' : 'host-a';
        const t0 = performance.now();
        const r = await lab.move(name, to, POSTCOPY.args);
        const t1 = performance.now();
        const trouble = await settle(tail, t0, t1);
        const gap = tail.gap(t0 - GAP_BEFORE_MS, t1 + GAP_AFTER_MS, t1 - 1);
        const pc = r.record?.postcopy ?? null;
        const s: PostcopySample = {
          round,
          direction: `${host}→${to}`,
          ok: r.error === null && pc !== null,
          error: r.error ?? (pc ? null : 'completed without post-copy'),
          guestTrouble: trouble,
          wallMs: r.cli.wallMs,
          totalMs: r.record?.totalMs ?? null,
          afterMs: pc?.afterMs ?? null,
          downtimeMs: pc?.downtimeMs ?? null,
          guestPauseMs: pc?.guestPauseMs ?? null,
          postcopyMs: pc?.durationMs ?? null,
          postcopyMiB: pc?.bytes != null ? pc.bytes / 1024 / 1024 : null,
          hbGapMs: gap?.maxGapMs ?? null,
        };
        postcopySamples.push(s);
        log(
          `round ${round} postcopy ${s.direction}  wall ${fmt(s.wallMs)} ms  switched after ${fmt(s.afterMs)} ms  ` +
            `downtime ${fmt(s.downtimeMs)} ms  guest pause ${fmt(s.guestPauseMs)} ms  ` +
            `post-copy ${fmt(s.postcopyMs)} ms (${fmt(s.postcopyMiB)} MiB)  hb gap ${fmt(s.hbGapMs)} ms` +
            (s.error ? `  FAILED: ${s.error}` : '') +
            (trouble ? `  guest: ${trouble}` : ''),
        );
        if (r.error === null) host = to;
        else host = (await lab.show(name).catch(() => ({ host }))).host;
      }
    } catch (e) {
      log(`workload postcopy aborted: ${msg(e)}`);
    } finally {
      tail.stop();
      for (const n of tail.notable) log(`postcopy guest: ${n.line}`);
      if (created) await lab.remove(name).catch((e: unknown) => log(`removing ${name}: ${msg(e)}`));
      if (was !== null) await fsp.writeFile(USERFAULTFD_SYSCTL, was).catch((e: unknown) => log(`sysctl: ${msg(e)}`));
    }
  }

  async function runWorkload(wl: Workload): Promise<void> {
    const cfg = WORKLOADS[wl];
    const name = `bench-${wl}`;
    log(`workload ${wl}: ${cfg.describe}`);
    const ferryTail = new HeartbeatTail(`ferry ${name}`);
    const rawTail = new HeartbeatTail(`raw ${name}`);
    tails.push(ferryTail, rawTail);
    let raw: RawVm | null = null;
    let ferryCreated = false;
    try {
      // Ferry's VM, on the lab's shared pool.
      const vm = await lab.newProbe(name, cfg.dirty);
      ferryCreated = true;
      for (const h of ['host-a', 'host-b']) ferryTail.add(lab.serialLog(h, vm.id), true);
      ferryTail.start();
      rawTail.start();

      // The raw VM: the same hardware (copied from Ferry's vm.json), its own folder and disk.
      const ferrySpec = parseVmSpec(JSON.parse(await fsp.readFile(path.join(vm.configPath, 'vm.json'), 'utf8')));
      const rawDir = path.join(dir, 'raw', name);
      const built = probeVm({
        name: `raw-${wl}`,
        configPath: rawDir,
        memoryMiB: ferrySpec.memoryMiB,
        cpus: ferrySpec.cpus,
        ...(cfg.dirty ? { probe: { dirty: { mib: 64, mibps: 16 } } } : {}),
      });
      const spec: VmSpec = await createVm(
        {
          ...built.spec,
          cpuModel: ferrySpec.cpuModel,
          machine: ferrySpec.machine,
          boot: ferrySpec.boot.kind === 'kernel' ? { ...ferrySpec.boot } : built.spec.boot,
        },
        built.create,
      );
      raw = new RawVm(spec, accel, path.join(dir, 'raw', `${name}-run`), rawTail, opts.rawDowntimeLimitMs);
      await raw.boot();
      await ferryTail.waitBeats(0, 25, 60_000);
      // Let the dirtier touch its whole working set (64 MiB at 16 MiB/s = 4 s) in both guests.
      await sleep(wl === 'dirty' ? 6000 : 2000);
      log(`${name}: both guests run (ferry ${vm.id}, raw ${spec.id})`);

      let ferryHost = vm.host;
      let ferryPaused = false;
      let rawPaused = false;
      // Only the VM being moved runs; the other is paused so they do not share the 2 cores.
      const activate = async (which: 'ferry' | 'raw'): Promise<void> => {
        if (which === 'ferry') {
          if (!rawPaused) {
            await raw!.pause().catch((e: unknown) => log(`pausing raw: ${msg(e)}`));
            rawPaused = true;
          }
          if (ferryPaused) {
            await lab.resume(name);
            ferryPaused = false;
          }
        } else {
          if (!ferryPaused) {
            await lab.pause(name).catch((e: unknown) => log(`pausing ferry VM: ${msg(e)}`));
            ferryPaused = true;
          }
          if (rawPaused) {
            await raw!.resume();
            rawPaused = false;
          }
        }
        const t = which === 'ferry' ? ferryTail : rawTail;
        await t.waitBeats(t.count, 25, waitMs(t)).catch((e: unknown) => log(`after resume: ${msg(e)}`));
      };

      // A guest that died in a move (QEMU 7.2's TCG race, QEMU-NOTES §E) is started again, so
      // every move of the run is one more survival sample, not a move of a dead guest.
      const reviveFerry = async (): Promise<void> => {
        const from = ferryTail.count;
        await lab.restart(name).catch((e: unknown) => log(`restarting ${name}: ${msg(e)}`));
        ferryPaused = false;
        await ferryTail.waitBeats(from, 25, 60_000).catch((e: unknown) => log(`after restart: ${msg(e)}`));
        await sleep(wl === 'dirty' ? 6000 : 2000);
      };
      const reviveRaw = async (): Promise<void> => {
        await raw!.shutdown().catch(() => undefined);
        rawPaused = false;
        await raw!.boot().catch((e: unknown) => log(`raw reboot failed: ${msg(e)}`));
        await sleep(wl === 'dirty' ? 6000 : 2000);
      };

      /** When the last move (either path) ended, its source QEMU gone: --settle-ms counts from here. */
      let lastEnd: number | null = null;
      const base = async (): Promise<Pick<Sample, 'load1' | 'foreignQemus' | 'idleBeforeMs'>> => {
        if (lastEnd !== null) {
          const left = lastEnd + opts.settleMs - performance.now();
          if (left > 0) await sleep(left);
        }
        return {
          idleBeforeMs: lastEnd === null ? null : Math.round(performance.now() - lastEnd),
          load1: os.loadavg()[0]!,
          foreignQemus: foreignQemuCount(dir),
        };
      };

      const ferryMove = async (round: number, tls: boolean): Promise<void> => {
        await activate('ferry');
        const to = ferryHost === 'host-a' ? 'host-b' : 'host-a';
        const b = await base();
        const t0 = performance.now();
        const r = await lab.move(name, to);
        const t1 = performance.now();
        // The CLI returns after the source's release (its QEMU has quit).
        lastEnd = t1;
        const stall = await settle(ferryTail, t0, t1);
        const gap = ferryTail.gap(t0 - GAP_BEFORE_MS, t1 + GAP_AFTER_MS, t1 - 1);
        const rec = r.record;
        const zero = rec?.downtimeMs === 0;
        const s: Sample = {
          workload: wl,
          round,
          path: tls ? 'ferry-tls' : 'ferry-notls',
          direction: `${ferryHost}→${to}`,
          ok: r.error === null,
          error: r.error,
          guestTrouble: stall,
          wallMs: r.cli.wallMs,
          totalMs: rec?.totalMs ?? null,
          downtimeMs: zero ? null : (rec?.downtimeMs ?? null),
          downtimeZeroInRecord: zero,
          pausedBytes: rec?.pausedBytes ?? null,
          downtimeLimitMs: rec?.downtimeLimitMs ?? null,
          hbGapMs: gap?.maxGapMs ?? null,
          hbGapSeqs: gap ? `${gap.fromSeq}→${gap.toSeq}` : null,
          hbLostSeqs: gap?.lostSeqs ?? null,
          passes: rec?.passes ?? null,
          bytesTransferred: rec?.bytesTransferred ?? null,
          phases: rec && r.error === null ? phasesOf(rec, r.cli) : null,
          steps: rec && r.error === null ? stepsOf(rec) : null,
          ...b,
        };
        (round > 0 ? samples : warmups).push(s);
        if (r.error === null) ferryHost = to;
        else {
          log(`ferry move ${s.direction} FAILED: ${r.error}`);
          try {
            ferryHost = (await lab.show(name)).host;
          } catch (e) {
            log(`vm show: ${msg(e)}`);
          }
        }
        if (stall) {
          log(`ferry ${s.direction}: ${stall}`);
          await reviveFerry();
        }
        log(
          `${round > 0 ? `round ${round}` : `warm-up ${1 - round}`} ${s.path.padEnd(11)} ${s.direction}  ` +
            `wall ${fmt(s.wallMs)} ms  ` +
            `total ${fmt(s.totalMs)} ms  downtime ${fmt(s.downtimeMs)} ms (limit ${fmt(s.downtimeLimitMs)}, ` +
            `${fmt((s.pausedBytes ?? NaN) / 1048576, 1)} MiB sent paused)  ` +
            `hb gap ${fmt(s.hbGapMs)} ms  passes ${fmt(s.passes)}`,
        );
      };

      const rawMove = async (round: number, tls: boolean): Promise<void> => {
        await activate('raw');
        const b = await base();
        const dirLabel = raw!.side === 'A' ? 'A→B' : 'B→A';
        const tStart = performance.now();
        const r = await raw!.move(tls ? rawTlsDir : undefined);
        // move() returns once the source has quit.
        lastEnd = performance.now();
        const tEnd = Number.isFinite(r.t1) ? r.t1 : performance.now();
        const stall = await settle(rawTail, tStart, tEnd);
        const gap = r.ok ? rawTail.gap(r.t0 - GAP_BEFORE_MS, r.t1 + GAP_AFTER_MS, r.t1 - 1) : null;
        const s: Sample = {
          workload: wl,
          round,
          path: tls ? 'raw-tls' : 'raw',
          direction: dirLabel,
          ok: r.ok,
          error: r.error,
          guestTrouble: stall,
          wallMs: r.ok ? r.wallMs : null,
          totalMs: r.qemuTotalMs,
          downtimeMs: r.downtimeMs,
          pausedBytes: r.pausedBytes,
          downtimeLimitMs: raw!.downtimeLimitMs,
          statsRequeried: r.statsRequeried,
          hbGapMs: gap?.maxGapMs ?? null,
          hbGapSeqs: gap ? `${gap.fromSeq}→${gap.toSeq}` : null,
          hbLostSeqs: gap?.lostSeqs ?? null,
          passes: r.passes,
          bytesTransferred: r.bytesTransferred,
          destSpawnMs: r.destSpawnMs,
          sourceQuitMs: r.sourceQuitMs,
          ...b,
        };
        (round > 0 ? samples : warmups).push(s);
        if (!r.ok) {
          log(`raw move ${dirLabel} FAILED: ${r.error}`);
          if (!raw!.current || raw!.current.hasExited) {
            log('raw source is gone: booting it again');
            rawPaused = false;
            await raw!.boot().catch((e: unknown) => log(`raw reboot failed: ${msg(e)}`));
          }
        }
        if (stall) {
          log(`raw ${dirLabel}: ${stall}`);
          await reviveRaw();
        }
        log(
          `${round > 0 ? `round ${round}` : `warm-up ${1 - round}`} ${s.path.padEnd(11)} ${dirLabel}      ` +
            `wall ${fmt(s.wallMs)} ms (+ dest spawn ${fmt(r.destSpawnMs)})  ` +
            `qemu total ${fmt(s.totalMs)} ms  downtime ${fmt(s.downtimeMs)} ms ` +
            `(${fmt((s.pausedBytes ?? NaN) / 1048576, 1)} MiB sent paused)  ` +
            `hb gap ${fmt(s.hbGapMs)} ms  passes ${fmt(s.passes)}`,
        );
      };

      // Per boot of both guests: warm-up rounds first (numbered from 1 - warmup to 0), the same
      // moves on both paths, left out of the figures: a fresh lab's first moves (cold agents,
      // caches, the first QEMUs) and a guest's first moves after its boot are slower on both
      // paths and say nothing about the steady state. Measured rounds go on numbering across boots.
      for (let boot = 1; boot <= opts.boots; boot++) {
        if (boot > 1) {
          log(`${name}: booting both guests again (boot ${boot} of ${opts.boots})`);
          await reviveFerry();
          await reviveRaw();
        }
        for (let w = 1 - opts.warmup; w <= opts.rounds; w++) {
          const round = w > 0 ? (boot - 1) * opts.rounds + w : w;
          for (const tls of [true, false]) {
            try {
              await lab.setTls(tls);
            } catch (e) {
              log(`host set --tls: ${msg(e)}`);
            }
            for (let leg = 0; leg < 2; leg++) {
              try {
                await ferryMove(round, tls);
              } catch (e) {
                log(`ferry move: ${msg(e)}`);
              }
              try {
                await rawMove(round, tls);
              } catch (e) {
                log(`raw move: ${msg(e)}`);
              }
            }
          }
        }
      }

      // The fixed cost of any CLI call, to put Ferry's wall time in context.
      await activate('ferry').catch(() => undefined);
      const other = ferryHost === 'host-a' ? 'host-b' : 'host-a';
      const floor: Record<string, number[]> = { help: [], show: [], compare: [] };
      for (let i = 0; i < 3; i++) {
        floor.help!.push((await ferry(['--help'])).wallMs);
        floor.show!.push((await ferry(['vm', 'show', name, '--json'], { lab: lab.lab })).wallMs);
        floor.compare!.push((await ferry(['compare-vm', name, '--to', other, '--json'], { lab: lab.lab })).wallMs);
      }
      cliFloor[wl] = {
        helpMs: median(floor.help!) ?? NaN,
        vmShowMs: median(floor.show!) ?? NaN,
        compareVmMs: median(floor.compare!) ?? NaN,
      };
    } catch (e) {
      log(`workload ${wl} aborted: ${msg(e)}`);
    } finally {
      ferryTail.stop();
      rawTail.stop();
      for (const [t, vmName] of [
        [ferryTail, name],
        [rawTail, `raw-${wl}`],
      ] as const) {
        for (const n of t.notable) notable.push({ workload: wl, vm: vmName, line: n.line });
      }
      await raw?.shutdown().catch(() => undefined);
      await killAllRaw();
      if (ferryCreated) await lab.remove(name).catch((e: unknown) => log(`removing ${name}: ${msg(e)}`));
    }
  }

  if (opts.postcopy) reportPostcopy(postcopySamples);
  report(samples, notable, cliFloor, {
    rounds: opts.rounds,
    warmup: opts.warmup,
    boots: opts.boots,
    settleMs: opts.settleMs,
    warmupMoves: warmups.length,
    workloads: opts.workloads,
    rawDowntimeLimitMs: opts.rawDowntimeLimitMs,
    loadStart,
    loadEnd: os.loadavg(),
    elapsedS: (Date.now() - started) / 1000,
  });
}

interface CliFloor {
  helpMs: number;
  vmShowMs: number;
  compareVmMs: number;
}

function report(
  samples: Sample[],
  notable: Array<{ workload: Workload; vm: string; line: string }>,
  cliFloor: Partial<Record<Workload, CliFloor>>,
  meta: {
    rounds: number;
    warmup: number;
    boots: number;
    settleMs: number;
    warmupMoves: number;
    workloads: Workload[];
    rawDowntimeLimitMs: number;
    loadStart: number[];
    loadEnd: number[];
    elapsedS: number;
  },
): void {
  const out: string[] = [];
  const label: Record<PathName, string> = {
    'ferry-tls': 'Ferry (TLS)',
    'ferry-notls': 'Ferry (no TLS)',
    'raw-tls': 'raw QMP (TLS)',
    raw: 'raw QMP (no TLS)',
  };
  // Like with like: Ferry with TLS against the raw script with TLS, without against without.
  const rawOf: Record<PathName, PathName> = {
    'ferry-tls': 'raw-tls',
    'ferry-notls': 'raw',
    'raw-tls': 'raw-tls',
    raw: 'raw',
  };
  for (const wl of meta.workloads) {
    const of = (p: PathName): Sample[] => samples.filter((s) => s.workload === wl && s.path === p);
    const okOf = (p: PathName): Sample[] => of(p).filter((s) => s.ok);
    const vals = (xs: Sample[], f: (s: Sample) => number | null | undefined): number[] =>
      xs.map(f).filter((x): x is number => typeof x === 'number');
    const rawWallOf = (p: PathName): number | null => median(vals(okOf(rawOf[p]), (s) => s.wallMs));
    const rawWallSpawnOf = (p: PathName): number | null =>
      median(vals(okOf(rawOf[p]), (s) => (s.wallMs ?? NaN) + (s.destSpawnMs ?? NaN)));
    const rows: string[][] = [];
    for (const p of ['ferry-tls', 'raw-tls', 'ferry-notls', 'raw'] as PathName[]) {
      const ok = okOf(p);
      const wall = median(vals(ok, (s) => s.wallMs));
      const total = median(vals(ok, (s) => s.totalMs));
      const rawWall = rawWallOf(p);
      const rawWallSpawn = rawWallSpawnOf(p);
      rows.push([
        label[p],
        `${ok.length}/${of(p).length}`,
        medMax(vals(ok, (s) => s.wallMs)),
        medMax(vals(ok, (s) => s.totalMs)),
        medMax(vals(ok, (s) => s.downtimeMs)),
        medMax(vals(ok, (s) => (s.pausedBytes == null ? null : Math.round(s.pausedBytes / 1048576)))),
        fmt(median(vals(ok, (s) => s.downtimeLimitMs))),
        medMax(
          vals(
            ok.filter((s) => !s.guestTrouble),
            (s) => s.hbGapMs,
          ),
        ),
        `${ok.filter((s) => !s.guestTrouble).length}/${ok.length}`,
        fmt(median(vals(ok, (s) => s.passes))),
        fmt((median(vals(ok, (s) => s.bytesTransferred)) ?? NaN) / 1048576),
        p === rawOf[p] ? '1.00' : wall !== null && rawWall ? (wall / rawWall).toFixed(2) : '-',
        wall !== null && rawWallSpawn ? (wall / rawWallSpawn).toFixed(2) : '-',
        // The agents' and QEMU's part (the record's total: first step → completed; no CLI, no pre-flight).
        p !== rawOf[p] && total !== null && rawWallSpawn ? (total / rawWallSpawn).toFixed(2) : '',
      ]);
    }
    for (const p of ['raw-tls', 'raw'] as PathName[])
      rows.push([
        `${label[p]} + dest spawn`,
        `${okOf(p).length}/${of(p).length}`,
        medMax(vals(okOf(p), (s) => (s.wallMs ?? NaN) + (s.destSpawnMs ?? NaN))),
        '',
        '',
        '',
        '',
        '',
        '',
        '',
        '',
        '',
        '1.00',
        '',
      ]);
    out.push(
      `\n== workload ${wl}: ${WORKLOADS[wl].describe}; ${meta.rounds} round(s) ` +
        `after ${meta.warmup} warm-up round(s), left out, ` +
        `${meta.boots === 1 ? 'one boot' : `on each of ${meta.boots} boots of both guests`}, ` +
        `each move ≥ ${meta.settleMs} ms after the previous one ended ==`,
    );
    out.push(
      '(ms, median / max over successful moves; "total" = Ferry record totalMs, raw = QEMU total-time; ' +
        '"hb gap" only over moves after which the guest ran on ("guest ok"))',
    );
    out.push(
      table(
        [
          'path',
          'ok',
          'wall',
          'total',
          'QEMU downtime',
          'MiB paused',
          'dt limit',
          'hb gap',
          'guest ok',
          'passes',
          'MiB sent',
          'wall/raw',
          'wall/(raw+spawn)',
          'total/(raw+spawn)',
        ],
        rows,
      ),
    );
    const zeros = samples.filter((s) => s.workload === wl && s.downtimeZeroInRecord).length;
    const requeried = samples.filter((s) => s.workload === wl && s.statsRequeried).length;
    if (zeros)
      out.push(
        `  ${zeros} Ferry record(s) said downtimeMs 0: read before QEMU 7.2 filled it in; ` +
          'left out of the downtime column',
      );
    if (requeried)
      out.push(
        `  ${requeried} raw move(s) first saw completed with total-time/downtime 0 (same QEMU race); asked again`,
      );
    const f = cliFloor[wl];
    if (f)
      out.push(
        `  CLI floor (medians of 3): 'ferry --help' ${fmt(f.helpMs)} ms, ` +
          `'vm show --json' ${fmt(f.vmShowMs)} ms, 'compare-vm --json' ${fmt(f.compareVmMs)} ms`,
      );
    const phaseRows: string[][] = [];
    for (const p of ['ferry-tls', 'ferry-notls'] as PathName[]) {
      const ph = okOf(p)
        .map((s) => s.phases)
        .filter((x): x is FerryPhases => !!x);
      if (!ph.length) continue;
      const keys: Array<keyof FerryPhases> = [
        'cliAndPreflightMs',
        'recheckMs',
        'prepareMs',
        'copyMs',
        'switchoverMs',
        'tailMs',
      ];
      phaseRows.push([label[p], ...keys.map((k) => fmt(median(ph.map((x) => x[k]))))]);
    }
    if (phaseRows.length) {
      out.push("\nwhere a Ferry move's wall time goes (medians, ms; from the record's events and the CLI's clock):");
      out.push(
        table(
          ['path', 'CLI+preflight', 're-check', 'prepare dest', 'pre-copy', 'switch-over+confirm', 'poll+exit'],
          phaseRows,
        ),
      );
    }
    // The record's own step times (both hosts): what each phase above is made of.
    const stepPaths = (['ferry-tls', 'ferry-notls'] as PathName[]).filter((p) => okOf(p).some((s) => s.steps));
    const stepNames = [...new Set(stepPaths.flatMap((p) => okOf(p).flatMap((s) => Object.keys(s.steps ?? {}))))];
    if (stepNames.length) {
      out.push("\neach step's time (medians, ms; from the record's steps, source and destination):");
      out.push(
        table(
          ['step', ...stepPaths.map((p) => label[p])],
          stepNames.map((n) => [
            n,
            ...stepPaths.map((p) => {
              const xs = okOf(p)
                .map((s) => s.steps?.[n])
                .filter((x): x is number => x !== undefined);
              return xs.length ? fmt(median(xs), 1) : '-';
            }),
          ]),
        ),
      );
    }
    const failed = samples.filter((s) => s.workload === wl && (!s.ok || s.guestTrouble));
    for (const s of failed)
      out.push(
        `  ! ${s.path} round ${s.round} ${s.direction}: ` +
          `${s.ok ? 'moved, but ' : `FAILED: ${s.error}; `}${s.guestTrouble ?? ''}`,
      );
    const loads = samples.filter((s) => s.workload === wl);
    if (loads.length)
      out.push(
        `machine during the moves: load1 ${fmt(median(loads.map((s) => s.load1)), 2)} ` +
          `(max ${fmt(max(loads.map((s) => s.load1)), 2)}), ` +
          `QEMUs of other runs: max ${fmt(max(loads.map((s) => s.foreignQemus)))}`,
      );
  }
  if (notable.length) {
    out.push('\nnotable guest console lines:');
    for (const n of notable.slice(0, 20)) out.push(`  ${n.workload} ${n.vm}: ${n.line}`);
  }
  out.push(
    `\nelapsed ${meta.elapsedS.toFixed(0)} s; ` +
      `load average at start ${meta.loadStart.map((x) => x.toFixed(2)).join(' ')}, ` +
      `at end ${meta.loadEnd.map((x) => x.toFixed(2)).join(' ')}`,
  );
  process.stdout.write(out.join('\n') + '\n');
  process.stdout.write('\n' + JSON.stringify({ meta, cliFloor, samples, notable }, null, 2) + '\n');
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);

function reportPostcopy(samples: PostcopySample[]): void {
  const ok = samples.filter((s) => s.ok && !s.guestTrouble);
  const vals = (f: (s: PostcopySample) => number | null): number[] =>
    ok.map(f).filter((x): x is number => typeof x === 'number');
  const rows = samples.map((s) => [
    `${s.round} ${s.direction}`,
    s.ok ? (s.guestTrouble ? `guest: ${s.guestTrouble}` : 'ok') : `FAILED: ${s.error ?? ''}`.slice(0, 60),
    fmt(s.wallMs),
    fmt(s.afterMs),
    fmt(s.downtimeMs),
    fmt(s.guestPauseMs),
    fmt(s.hbGapMs),
    fmt(s.postcopyMs),
    fmt(s.postcopyMiB),
  ]);
  rows.push([
    'median / max',
    `${ok.length}/${samples.length} ok`,
    medMax(vals((s) => s.wallMs)),
    medMax(vals((s) => s.afterMs)),
    medMax(vals((s) => s.downtimeMs)),
    medMax(vals((s) => s.guestPauseMs)),
    medMax(vals((s) => s.hbGapMs)),
    medMax(vals((s) => s.postcopyMs)),
    medMax(vals((s) => s.postcopyMiB)),
  ]);
  process.stdout.write(
    `\n## Post-copy (${POSTCOPY.describe})\n\n` +
      table(
        [
          'round',
          'outcome',
          'wall ms',
          'switched after ms',
          'downtime ms',
          'guest pause ms',
          'hb gap ms',
          'post-copy ms',
          'post-copy MiB',
        ],
        rows,
      ) +
      '\n',
  );
}
