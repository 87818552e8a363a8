// How fast a running guest dirties its memory, measured by QEMU itself (calc-dirty-rate, then
// query-dirty-rate until measured): the guest keeps running, and the agent only waits.
import { FerryError } from '../errors.js';
import type { DirtyRateInfo } from '../qemu/commands.js';
import type { QmpClient } from '../qemu/qmp.js';
import { sleep } from '../util/exec.js';

export interface DirtyRate {
  bytesPerSecond: number;
  mode: 'page-sampling' | 'dirty-bitmap';
  sampleMs: number;
}

/** Sampled pages per GiB: QEMU's maximum (4096) rather than its 512, so a small guest still gets ~1000 pages. */
const SAMPLE_PAGES = 4096;
const MiB = 1024 * 1024;

export async function measureDirtyRate(
  qmp: QmpClient,
  opts: { vm: string; calcTimeS?: number; signal?: AbortSignal },
): Promise<DirtyRate> {
  const calcTimeS = opts.calcTimeS ?? 1;
  // Under TCG QEMU 7.2 dies (SIGSEGV) on mode dirty-bitmap, and dirty-ring needs KVM: sampling only.
  const mode = 'page-sampling';
  const call = { signal: opts.signal, timeoutMs: 10_000 };
  await qmp.execute('calc-dirty-rate', { 'calc-time': calcTimeS, 'sample-pages': SAMPLE_PAGES, mode }, call);
  // One wait for the sample, then short polls for QEMU's bookkeeping: a handful of calls at most.
  await sleep(calcTimeS * 1000, opts.signal);
  const until = Date.now() + calcTimeS * 1000 + 10_000;
  let info: DirtyRateInfo = await qmp.execute('query-dirty-rate', undefined, call);
  while (info.status !== 'measured' && Date.now() < until) {
    await sleep(100, opts.signal);
    info = await qmp.execute('query-dirty-rate', undefined, call);
  }
  if (info.status !== 'measured' || info['dirty-rate'] === undefined)
    throw new FerryError(
      'E_TIMEOUT',
      `Cannot measure how fast VM '${opts.vm}' dirties its memory: QEMU's calc-dirty-rate ` +
        `did not finish (status ${info.status}); try again`,
      { context: { vm: opts.vm } },
    );
  return { bytesPerSecond: info['dirty-rate'] * MiB, mode, sampleMs: info['calc-time'] * 1000 };
}
