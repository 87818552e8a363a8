// How fast a running guest dirties its memory, measured by QEMU itself (calc-dirty-rate, then
// query-dirty-rate until measured): the guest keeps running, and the agent only waits.
import { FerryError } from '../errors.js';
import type { DirtyRateInfo } from '../qemu/commands.js';
import type { QmpClient } from '../qemu/qmp.js';
import { sleep } from '../util/exec.js';

export interface DirtyRate {
  bytesPerSecond: number;
  mode: 'page-sampling' | 'dirty-bitmap';
  /** The first sample's length, whose rate this is. */
  sampleMs: number;
  /**
   * The memory the guest keeps rewriting, when a second, longer sample found no more of it
   * dirtied than the first: a pass longer than the first sample dirties no more than this.
   */
  workingSetBytes?: number;
}

/** Sampled pages per GiB: QEMU's maximum (4096) rather than its 512, so a small guest still gets ~1000 pages. */
const SAMPLE_PAGES = 4096;
const MiB = 1024 * 1024;
/** Below this rate a second sample is not worth its time: the passes will not be shaped by it. */
const WORKING_SET_MIN_BPS = 1 * MiB;
/** The second sample's length against the first's, and the growth under which the writes were the same pages. */
const SECOND_SAMPLE_FACTOR = 2;
const SAME_PAGES_GROWTH = 1.5;

/**
 * How fast the guest dirties memory: QEMU's page-sampling over `calcTimeS` (1 s). A guest that
 * dirties at least 1 MiB/s is sampled again over twice that: when the longer sample found less
 * than 1.5× the pages of the first, the guest rewrites the same memory, and that amount is its
 * working set (a rate alone would have a pass of a minute dirty a minute's worth of pages).
 */
export async function measureDirtyRate(
  qmp: QmpClient,
  opts: { vm: string; calcTimeS?: number; signal?: AbortSignal },
): Promise<DirtyRate> {
  const calcTimeS = opts.calcTimeS ?? 1;
  const before: DirtyRateInfo = await qmp.execute('query-dirty-rate', undefined, {
    signal: opts.signal,
    timeoutMs: 10_000,
  });
  // QEMU's first sample of a guest is wrong (sampleOnce says how): one to throw away.
  if (before.status === 'unstarted') await sampleOnce(qmp, opts.vm, calcTimeS, opts.signal);
  const first = await sample(qmp, opts.vm, calcTimeS, opts.signal);
  const rate: DirtyRate = { bytesPerSecond: first.bps, mode: 'page-sampling', sampleMs: first.ms };
  if (first.bps < WORKING_SET_MIN_BPS) return rate;
  const second = await sample(qmp, opts.vm, calcTimeS * SECOND_SAMPLE_FACTOR, opts.signal);
  const dirtied = [(first.bps * first.ms) / 1000, (second.bps * second.ms) / 1000] as const;
  return dirtied[1] < dirtied[0] * SAME_PAGES_GROWTH ? { ...rate, workingSetBytes: Math.max(...dirtied) } : rate;
}

/**
 * One calc-dirty-rate: bytes/s over the sample's length in ms. Taken again once when QEMU took
 * longer than asked (it hashes its sampled pages before the period starts, and reports the
 * whole time). Its first sample of a guest is wrong either way: for a fresh 1 GiB guest that
 * dirtied 30 MiB/s, QEMU 7.2 under TCG took 2.3 s and reported 3 MiB/s over "2 s", or 12 MiB/s
 * over 1 s; the samples after it were right (measureDirtyRate throws that one away).
 */
async function sample(
  qmp: QmpClient,
  vm: string,
  calcTimeS: number,
  signal?: AbortSignal,
): Promise<{ bps: number; ms: number }> {
  const once = await sampleOnce(qmp, vm, calcTimeS, signal);
  return once.ms > calcTimeS * 1000 ? sampleOnce(qmp, vm, calcTimeS, signal) : once;
}

async function sampleOnce(
  qmp: QmpClient,
  vm: string,
  calcTimeS: number,
  signal?: AbortSignal,
): Promise<{ bps: number; ms: number }> {
  // Under TCG QEMU 7.2 dies (SIGSEGV) on mode dirty-bitmap, and dirty-ring needs KVM: sampling only.
  const mode = 'page-sampling';
  const call = { signal, timeoutMs: 10_000 };
  await qmp.execute('calc-dirty-rate', { 'calc-time': calcTimeS, 'sample-pages': SAMPLE_PAGES, mode }, call);
  // One wait for the sample, then short polls for QEMU's bookkeeping: a handful of calls at most.
  await sleep(calcTimeS * 1000, signal);
  const until = Date.now() + calcTimeS * 1000 + 10_000;
  let info: DirtyRateInfo = await qmp.execute('query-dirty-rate', undefined, call);
  while (info.status !== 'measured' && Date.now() < until) {
    await sleep(100, signal);
    info = await qmp.execute('query-dirty-rate', undefined, call);
  }
  if (info.status !== 'measured' || info['dirty-rate'] === undefined)
    throw new FerryError(
      'E_TIMEOUT',
      `Cannot measure how fast VM '${vm}' dirties its memory: QEMU's calc-dirty-rate ` +
        `did not finish (status ${info.status}); try again`,
      { context: { vm } },
    );
  return { bps: info['dirty-rate'] * MiB, ms: info['calc-time'] * 1000 };
}
