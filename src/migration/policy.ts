// Convergence from intent: the user says how much downtime is acceptable and how long the
// move may take; the policy turns that into QEMU settings and escalates step by step when
// the copy stops converging. Pure logic: the driver applies the decisions.
//
// The ladder:
//   0. plain pre-copy at full bandwidth, a small downtime limit (min(20 ms, max)), auto-converge
//      armed but only for a guest that dirties faster than the link carries (trigger 100 %);
//   1. verdict stalled/not-converging at a pass end → raise the downtime limit (×2 each step,
//      or to QEMU's expected downtime) up to --max-downtime;
//   2. at --max-downtime and still not converging → throttle the guest's vCPUs (auto-converge
//      trigger down to 50 %, the throttle grows each pass);
//   3. the --finish-within budget is spent → post-copy if --allow-postcopy and the link is
//      healthy (linkProblem), else abort and say why (dirty rate against bandwidth). Never
//      cancel once post-copy has started: a failure there loses the guest on both hosts.
import { existsSync } from 'node:fs';
import { DEFAULTS } from '../api/defaults.js';
import type { MigrationParameters } from '../qemu/commands.js';
import type { Sample, Verdict } from './progress.js';

export interface PolicyOptions {
  maxDowntimeMs: number;
  finishWithinMs: number;
  /** bytes/s; undefined = as fast as the link goes */
  bandwidthBps?: number;
  allowPostcopy: boolean;
  /** First downtime limit (default START_DOWNTIME_MS, capped at maxDowntimeMs). */
  startDowntimeMs?: number;
}

export const UNLIMITED_BANDWIDTH = 100 * 1024 ** 3; // QEMU caps at its own maximum
export const START_DOWNTIME_MS = 20;
/**
 * Under TCG, QEMU 7.2 loses writes a Linux guest makes between a pass's bitmap sync and its next
 * TLB flush (docs/tcg-moves.md); fewer passes leave fewer such windows, so TCG starts at QEMU's
 * 300 ms (measured with pti=on under load: 20 of 20 moves survived at 300 ms, 15 of 18 at 20).
 */
export const TCG_START_DOWNTIME_MS = 300;

/**
 * Post-copy only over a healthy link: its byte counter moved within the last HEALTHY_GAP_MS
 * and never stood still longer than that in the last HEALTHY_WINDOW_MS. In post-copy the
 * guest's memory is split between the hosts, so a link that falters then loses the guest.
 */
export const HEALTHY_GAP_MS = 3000;
export const HEALTHY_WINDOW_MS = 10_000;

export function defaultFinishWithinMs(memoryMiB: number): number {
  // A minute, plus 30 s per GiB of RAM: generous for a LAN, bounded for a stuck guest.
  return Math.round(60_000 + (memoryMiB / 1024) * 30_000);
}

export type Decision =
  | { kind: 'set-parameters'; params: MigrationParameters; reason: string }
  | { kind: 'start-postcopy'; reason: string }
  | { kind: 'abort'; reason: string };

export class ConvergencePolicy {
  readonly opts: PolicyOptions;
  downtimeMs: number;
  throttling = false;
  postcopy = false;
  step = 0;
  private lastPassJudged = -1;
  private abortedOrPostcopy = false;
  private lastBytes = -1;
  private lastMoveAtMs = 0;
  private lastStillAtMs = 0;
  private lastGapEndMs = -Infinity;
  private lastGapMs = 0;

  constructor(opts: PolicyOptions) {
    this.opts = opts;
    this.downtimeMs = Math.min(opts.startDowntimeMs ?? START_DOWNTIME_MS, opts.maxDowntimeMs);
  }

  /** Parameters for the start of the copy. */
  initialParameters(): MigrationParameters {
    return {
      'max-bandwidth': Math.round(this.opts.bandwidthBps ?? UNLIMITED_BANDWIDTH),
      'downtime-limit': this.downtimeMs,
      'cpu-throttle-initial': 20,
      'cpu-throttle-increment': 10,
      'max-cpu-throttle': 99,
      'throttle-trigger-threshold': 100,
    };
  }

  /** One decision per pass end at most (passes are where a trend can be judged). */
  onSample(s: Sample, verdict: Verdict | null, elapsedMs: number): Decision[] {
    if (this.abortedOrPostcopy) return [];
    this.watchLink(s);
    if (elapsedMs >= this.opts.finishWithinMs) {
      this.abortedOrPostcopy = true;
      const why =
        `the guest dirties memory at ${mib(s.dirtyBps)} MiB/s against ${mib(s.bandwidthBps)} MiB/s of bandwidth, ` +
        `${mib(s.remainingBytes)} MiB still to copy`;
      const sick = this.opts.allowPostcopy ? this.linkProblem(s.atMs) : null;
      if (sick) {
        return [
          {
            kind: 'abort',
            reason:
              `it did not converge within ${Math.round(this.opts.finishWithinMs / 1000)} s (--finish-within): ` +
              `${why}; post-copy was allowed but refused because the link is not healthy (${sick}): a failure ` +
              'during post-copy loses the guest on both hosts; check the migration network and move it again',
          },
        ];
      }
      if (this.opts.allowPostcopy) {
        this.postcopy = true;
        return [
          {
            kind: 'start-postcopy',
            reason: `budget of ${Math.round(this.opts.finishWithinMs / 1000)} s spent: ${why}; switching to post-copy`,
          },
        ];
      }
      return [
        {
          kind: 'abort',
          reason:
            `it did not converge within ${Math.round(this.opts.finishWithinMs / 1000)} s (--finish-within): ` +
            `${why}; raise --max-downtime or --finish-within, give it more --bandwidth, or allow post-copy ` +
            'with --allow-postcopy',
        },
      ];
    }
    if (s.pass === this.lastPassJudged || verdict === null || verdict === 'converging') return [];
    this.lastPassJudged = s.pass;
    if (this.downtimeMs < this.opts.maxDowntimeMs) {
      const wanted = Math.max(this.downtimeMs * 2, Math.min(s.expectedDowntimeMs ?? 0, this.opts.maxDowntimeMs));
      this.downtimeMs = Math.min(this.opts.maxDowntimeMs, wanted);
      this.step++;
      return [
        {
          kind: 'set-parameters',
          params: { 'downtime-limit': this.downtimeMs },
          reason: `${verdict}: downtime limit raised to ${this.downtimeMs} ms`,
        },
      ];
    }
    if (!this.throttling) {
      this.throttling = true;
      this.step++;
      return [
        {
          kind: 'set-parameters',
          params: { 'throttle-trigger-threshold': 50 },
          reason: `${verdict} at the maximum downtime: throttling the guest's vCPUs (auto-converge)`,
        },
      ];
    }
    return [];
  }

  /** Why the link is not healthy enough for post-copy at `nowMs` (the latest sample), or null when it is. */
  linkProblem(nowMs: number): string | null {
    if (this.lastBytes < 0) return 'no data moved yet';
    const still = this.lastStillAtMs > this.lastMoveAtMs ? nowMs - this.lastMoveAtMs : 0;
    if (still > HEALTHY_GAP_MS) return `no data moved for the last ${sec(still)} s`;
    if (nowMs - this.lastGapEndMs < HEALTHY_WINDOW_MS) {
      return `the stream stood still for ${sec(this.lastGapMs)} s in the last ${HEALTHY_WINDOW_MS / 1000} s`;
    }
    return null;
  }

  /** A stall is seen only between samples that show the same byte count (samples may be far apart). */
  private watchLink(s: Sample): void {
    if (s.transferredBytes === this.lastBytes) {
      this.lastStillAtMs = s.atMs;
      return;
    }
    const gap = this.lastStillAtMs > this.lastMoveAtMs ? this.lastStillAtMs - this.lastMoveAtMs : 0;
    if (this.lastBytes >= 0 && gap > HEALTHY_GAP_MS) {
      this.lastGapEndMs = s.atMs;
      this.lastGapMs = gap;
    }
    this.lastBytes = s.transferredBytes;
    this.lastMoveAtMs = s.atMs;
  }
}

function sec(ms: number): string {
  return (ms / 1000).toFixed(1);
}

function mib(bps: number): string {
  return (bps / 1024 / 1024).toFixed(1);
}

/**
 * How long a copy may move no data before it is given up. TCP over a cut link does not
 * fail, it waits (for minutes); without this a move would hang with the guest's pages or
 * disks half copied. FERRY_MIGRATION_STALL_S (read by the agent) changes it, e.g. for tests.
 */
export const DEFAULT_STALL_MS = DEFAULTS.stallSeconds * 1000;
export function stallTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const s = Number(env.FERRY_MIGRATION_STALL_S);
  return Number.isFinite(s) && s >= 1 ? Math.round(s * 1000) : DEFAULT_STALL_MS;
}

/** Watches a byte counter: stalled once it has not grown for `ms`. Pure: the caller feeds it. */
export class StallWatchdog {
  private last = -1;
  private since = 0;
  constructor(readonly ms: number) {}
  /** Feed the bytes moved so far; true when nothing moved for `ms`. */
  feed(bytes: number, now: number): boolean {
    if (bytes !== this.last) {
      this.last = bytes;
      this.since = now;
      return false;
    }
    return now - this.since >= this.ms;
  }
  reset(now: number): void {
    this.last = -1;
    this.since = now;
  }
}

/**
 * Test hook for the fault matrix (test/faults): with FERRY_TEST_HOLD_DIR set in the agent's
 * environment, a move waits at the start of `phase` while the file DIR/<phase> exists
 * (at most 2 min), so a test can inject a fault in a phase that otherwise lasts
 * milliseconds. `phase` may also name a point of the destination's Prepare ('incoming-qemu'
 * before its QEMU starts, 'incoming-spawned' after, before the journal has its pid) or of a
 * resumable storage move ('storage-paused': its guest paused for the switch), or a node's HA
 * restart ('ha-start', before it boots the VM the leader gave it). Without the
 * variable this returns at once.
 */
export async function testHold(phase: string, log: (m: string) => void, signal?: AbortSignal): Promise<void> {
  const dir = process.env.FERRY_TEST_HOLD_DIR;
  if (!dir) return;
  const { existsSync } = await import('node:fs');
  const file = `${dir}/${phase}`;
  if (!existsSync(file)) return;
  log(`test hold in ${phase}`);
  // DIR/<phase>.held says a move waits here (a test acts then, not after a guessed delay).
  const { writeFileSync, rmSync } = await import('node:fs');
  writeFileSync(`${file}.held`, '');
  try {
    const until = Date.now() + 120_000;
    while (existsSync(file) && Date.now() < until) {
      if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error('aborted');
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    rmSync(`${file}.held`, { force: true });
  }
}

/**
 * Test hook (as testHold): true while the file FERRY_TEST_HOLD_DIR/<name> exists, for a fault
 * a test cannot cause from outside ('ha-start-refuse': a node refuses the HA restarts given to it).
 */
export function testFault(name: string): boolean {
  const dir = process.env.FERRY_TEST_HOLD_DIR;
  return !!dir && existsSync(`${dir}/${name}`);
}
