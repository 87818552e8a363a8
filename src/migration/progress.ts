// Honest progress for a memory copy: progress that never goes backwards, an ETA from the
// measured transfer and dirty rates, and a verdict judged at pass boundaries (remaining
// after each pass against the pass before; dirty rate against bandwidth).
import type { MigrationInfo } from '../qemu/commands.js';
import type { MigrationRecord } from './schemas.js';

export type Verdict = 'converging' | 'stalled' | 'not-converging';

export interface Sample {
  atMs: number;
  pass: number;
  totalBytes: number;
  remainingBytes: number;
  transferredBytes: number;
  /** bytes/s on the wire, as QEMU measures it */
  bandwidthBps: number;
  /** bytes/s the guest dirties */
  dirtyBps: number;
  expectedDowntimeMs: number | null;
  throttlePct: number;
}

export function sampleFrom(info: MigrationInfo, atMs: number): Sample | null {
  const r = info.ram;
  if (!r) return null;
  const page = r['page-size'] || 4096;
  return {
    atMs,
    pass: r['dirty-sync-count'],
    totalBytes: r.total,
    remainingBytes: r.remaining,
    transferredBytes: r.transferred,
    bandwidthBps: (r.mbps * 1e6) / 8,
    dirtyBps: r['dirty-pages-rate'] * page,
    expectedDowntimeMs: info['expected-downtime'] ?? null,
    throttlePct: info['cpu-throttle-percentage'] ?? 0,
  };
}

export interface PassEnd {
  pass: number;
  remainingBytes: number;
  dirtyBps: number;
  bandwidthBps: number;
}

export interface ProgressState {
  progress: number;
  etaSeconds: number | null;
  verdict: Verdict | null;
  passes: PassEnd[];
  last: Sample | null;
}

export function newProgress(): ProgressState {
  return { progress: 0, etaSeconds: null, verdict: null, passes: [], last: null };
}

/** Judges the trend from the last two pass ends. */
export function judge(passes: PassEnd[]): Verdict | null {
  const cur = passes.at(-1);
  if (!cur) return null;
  if (cur.bandwidthBps > 0 && cur.dirtyBps >= cur.bandwidthBps) return 'not-converging';
  const prev = passes.at(-2);
  if (!prev) return 'converging';
  if (cur.remainingBytes < prev.remainingBytes * 0.9) return 'converging';
  if (cur.remainingBytes > prev.remainingBytes * 1.1) return 'not-converging';
  return 'stalled';
}

/**
 * Folds one sample in. `span` maps memory-copy progress into the job's overall progress
 * (e.g. [0.05, 0.98]) so phases before and after fit in one bar.
 */
export function update(state: ProgressState, s: Sample, span: [number, number] = [0, 1]): ProgressState {
  const passes = [...state.passes];
  const prev = state.last;
  // A new dirty-sync count means the previous pass ended: record what it left behind.
  if (prev && s.pass > prev.pass) {
    passes.push({
      pass: prev.pass,
      remainingBytes: s.remainingBytes,
      dirtyBps: s.dirtyBps,
      bandwidthBps: s.bandwidthBps || prev.bandwidthBps,
    });
  }
  const denom = s.transferredBytes + s.remainingBytes;
  const raw = denom > 0 ? s.transferredBytes / denom : 0;
  const mapped = span[0] + (span[1] - span[0]) * Math.min(1, raw);
  const progress = Math.min(0.99, Math.max(state.progress, mapped));
  const verdict = passes.length
    ? judge(passes)
    : s.bandwidthBps > 0 && s.dirtyBps >= s.bandwidthBps
      ? 'not-converging'
      : 'converging';
  const net = s.bandwidthBps - s.dirtyBps;
  const etaSeconds =
    verdict === 'not-converging' || net <= 0 || s.bandwidthBps <= 0
      ? null
      : Math.max(0, Math.round((s.remainingBytes / net) * 10) / 10);
  return { progress, etaSeconds, verdict, passes, last: s };
}

/** ETA of a plain copy of `remaining` bytes at `rateBps`. */
export function copyEta(remaining: number, rateBps: number): number | null {
  return rateBps > 0 ? Math.round((remaining / rateBps) * 10) / 10 : null;
}

/** Folds mirror progress into the record (per disk and in total); returns done and total bytes and the rate. */
export function foldMirrorProgress(
  r: MigrationRecord,
  ps: Array<{ diskId: string; done: number; total: number }>,
  startedAt: number,
): { done: number; total: number; rate: number } {
  let done = 0;
  let total = 0;
  for (const p of ps) {
    const disk = r.disks.find((x) => x.id === p.diskId);
    if (disk) {
      disk.bytesDone = p.done;
      disk.bytesTotal = p.total;
    }
    done += p.done;
    total += p.total;
  }
  const rate = done / Math.max(0.001, (Date.now() - startedAt) / 1000);
  r.bytesTransferred = done;
  r.remainingBytes = total - done;
  r.rate = { transferBps: Math.round(rate), dirtyBps: 0 };
  return { done, total, rate };
}
