// Predict a live move before it starts: pure logic over the guest's measured dirty rate, the
// link's rate and the convergence policy. The pre-copy passes are simulated with the same
// ConvergencePolicy and judge() the move itself uses, so the prediction names the ladder step
// (policy.ts) the real move will reach, not a separate guess of it.
import { ConvergencePolicy } from './policy.js';
import { judge, type PassEnd } from './progress.js';
import type { MigrationRecord, Prediction } from './schemas.js';

const MiB = 1024 * 1024;
const PAGE = 4096;

export interface PredictInput {
  memoryMiB: number;
  /** bytes/s the guest dirties (QEMU's calc-dirty-rate). */
  dirtyBps: number;
  /** bytes/s the link carries for this move (history, --bandwidth or assumed). */
  linkBps: number;
  /** Time of a move outside its memory copy (prepare, switch-over), in ms. */
  overheadMs: number;
  maxDowntimeMs: number;
  startDowntimeMs: number;
  finishWithinMs: number;
  allowPostcopy: boolean;
  /**
   * The share of its memory the first pass puts on the wire (0–1): QEMU sends a zero page as a
   * few bytes. Sampled from the guest's RAM (qemu/guest-ram.ts); 1, every page, when unknown.
   */
  wireShare?: number;
  /**
   * bytes/s of zero pages the first pass gets through (both QEMUs read and handle each one);
   * absent: learnt from no move, and then a zero page costs the floor's share of the link.
   */
  zeroBps?: number;
  /**
   * The share of data pages in each of equal consecutive parts of the guest's RAM, in the order
   * the first pass sends them (qemu/guest-ram.ts): where the data lies decides how much of the
   * first pass is left when QEMU pauses the guest (firstPassSweep). Absent: the first pass is
   * priced whole.
   */
  wireByPart?: readonly number[];
  /** The memory the guest keeps rewriting (dirty-rate.ts): a pass dirties no more; absent: all of it. */
  workingSetBytes?: number;
  /**
   * What a switch-over costs beyond sending its last pages, in ms (the device state, stopping
   * and starting the vCPUs, the hosts' handshake): learnt from the same history; absent: 0.
   */
  switchMs?: number;
}

export type PredictedStep = Prediction['step'];

export interface PredictOutcome {
  totalMs: number;
  /** null when the move gives up (abort): the guest never pauses. */
  downtimeMs: number | null;
  /**
   * QEMU's dirty-bitmap syncs, as the move's record counts them (its `passes`): the setup's, one
   * at each pass's end, and the switch-over's (none for a move given up).
   */
  passes: number;
  converges: boolean;
  step: PredictedStep;
  /** The downtime limit QEMU ends with, in ms. */
  downtimeLimitMs: number;
  /** Highest vCPU throttle (auto-converge), in percent. */
  throttlePct: number;
}

/** QEMU's auto-converge in 7.2: once armed, the throttle starts at 20 % and grows 10 points per pass. */
const THROTTLE_INITIAL = 20;
const THROTTLE_STEP = 10;
const THROTTLE_MAX = 99;
/** Post-copy stops the guest only to send its device state and the pages it wants first. */
const POSTCOPY_SWITCH_MS = 50;
/** Enough passes for any guest: a move that has not ended by then is out of its --finish-within budget. */
const MAX_PASSES = 10_000;
/** A floor for the measured share: QEMU still reads every page to find the zero ones. */
const MIN_WIRE_SHARE = 0.05;

/**
 * Pre-copy pass by pass: pass 0 sends all memory, each later pass what the guest dirtied during
 * the one before (never more than its memory). QEMU stops the guest as soon as what is left
 * fits the downtime limit at the link's rate; at each pass end the policy may raise that limit,
 * arm the throttle, switch to post-copy or give up.
 */
export function predictMove(input: PredictInput): PredictOutcome {
  const mem = input.memoryMiB * MiB;
  const link = Math.max(1, input.linkBps);
  const zeroBps = input.zeroBps !== undefined && input.zeroBps > 0 ? input.zeroBps : null;
  // With no rate for zero pages learnt, the floor stands for QEMU reading every page.
  const share = Math.min(1, Math.max(zeroBps === null ? MIN_WIRE_SHARE : 0, input.wireShare ?? 1));
  const policy = new ConvergencePolicy({
    maxDowntimeMs: input.maxDowntimeMs,
    finishWithinMs: input.finishWithinMs,
    allowPostcopy: input.allowPostcopy,
    startDowntimeMs: input.startDowntimeMs,
  });
  // At step 0 auto-converge is armed for a guest that dirties faster than the link (trigger 100 %).
  let triggerPct = 100;
  let throttle = 0;
  let maxThrottle = 0;
  let elapsedMs = 0;
  let remaining = mem;
  // What the link carried so far: the policy allows post-copy only over a link that moves data.
  let sent = 0;
  const ends: PassEnd[] = [];
  const stepOf = (): PredictedStep =>
    policy.postcopy ? 'post-copy' : maxThrottle > 0 ? 'auto-converge' : policy.step > 0 ? 'raise-downtime' : 'pre-copy';
  const done = (downtimeMs: number | null, converges: boolean, step: PredictedStep, passes: number) => ({
    totalMs: Math.round(input.overheadMs + elapsedMs + (downtimeMs ?? 0)),
    downtimeMs: downtimeMs === null ? null : Math.round(downtimeMs),
    passes: passes + (step === 'abort' ? 1 : 2),
    converges,
    step,
    downtimeLimitMs: policy.downtimeMs,
    throttlePct: maxThrottle,
  });

  // Where the data lies in the guest's RAM, when sampled: the first pass ends where QEMU syncs.
  const sweep = input.wireByPart?.length
    ? firstPassSweep(mem, input.wireByPart, link, zeroBps, policy.downtimeMs)
    : null;
  for (let pass = 1; pass <= MAX_PASSES; pass++) {
    // Later passes send the pages the guest wrote meanwhile: those are data.
    const wire = pass === 1 ? (sweep ? sweep.sentWire : remaining * share) : remaining;
    const zeroMs = pass === 1 && zeroBps !== null && !sweep ? ((remaining - wire) / zeroBps) * 1000 : 0;
    const passMs = pass === 1 && sweep ? sweep.ms : (wire / link) * 1000 + zeroMs;
    elapsedMs += passMs;
    sent += wire;
    const dirtyBps = input.dirtyBps * (1 - throttle / 100);
    const dirtied = Math.min(mem, input.workingSetBytes ?? mem, (dirtyBps * passMs) / 1000);
    // QEMU's throttle check at the dirty sync: dirtied more than trigger % of what it sent.
    if (dirtied > (wire * triggerPct) / 100) {
      throttle = throttle === 0 ? THROTTLE_INITIAL : Math.min(THROTTLE_MAX, throttle + THROTTLE_STEP);
      maxThrottle = Math.max(maxThrottle, throttle);
    }
    if (pass === 1 && sweep) {
      // QEMU's sync near the first pass's end: it pauses the guest when the pages left of the
      // pass and those dirtied since fit its threshold, and sends them paused.
      if (sweep.leftBytes + dirtied < sweep.thresholdBytes)
        return done(sweep.leftMs + (dirtied / link) * 1000 + (input.switchMs ?? 0), true, stepOf(), pass);
      // Else the pass's tail goes on with what the guest dirtied (priced as data).
      remaining = Math.min(mem, sweep.leftWire + dirtied);
    } else remaining = dirtied;
    const leftMs = (remaining / link) * 1000;
    // QEMU decides on the pages left alone; the guest's pause also holds the switch-over's own cost.
    if (leftMs <= policy.downtimeMs) return done(leftMs + (input.switchMs ?? 0), true, stepOf(), pass);

    ends.push({ pass, remainingBytes: remaining, dirtyBps, bandwidthBps: link });
    const sample = {
      atMs: elapsedMs,
      pass: pass + 1,
      totalBytes: mem,
      remainingBytes: remaining,
      transferredBytes: sent,
      bandwidthBps: link,
      dirtyBps,
      expectedDowntimeMs: leftMs,
      throttlePct: throttle,
    };
    for (const d of policy.onSample(sample, judge(ends), elapsedMs)) {
      if (d.kind === 'abort') return done(null, false, 'abort', pass);
      if (d.kind === 'start-postcopy') {
        // The guest runs on the destination; the rest arrives at the link's rate.
        const restMs = (remaining / link) * 1000;
        elapsedMs += restMs;
        return done(POSTCOPY_SWITCH_MS, false, 'post-copy', pass);
      }
      if (d.params['throttle-trigger-threshold'] !== undefined) triggerPct = d.params['throttle-trigger-threshold'];
    }
  }
  return done(null, false, 'abort', MAX_PASSES);
}

/** QEMU 7.2 measures the bandwidth its threshold comes from over windows of ~100 ms (BUFFER_DELAY). */
const BANDWIDTH_WINDOW_MS = 100;

export interface FirstPass {
  /** Time from the pass's start to QEMU's sync near its end, and the wire bytes sent by then. */
  ms: number;
  sentWire: number;
  /** QEMU's threshold there: the bytes it put on the wire over its last window, times the downtime limit. */
  thresholdBytes: number;
  /** The pass's pages left then (counted whole, as QEMU counts them), their wire bytes and sending time. */
  leftBytes: number;
  leftWire: number;
  leftMs: number;
}

/**
 * The first pass part by part, in address order, as QEMU 7.2 sends it: after each part, when the
 * pages left (whole pages, zero ones too) are under the bytes sent over the last window times the
 * downtime limit, QEMU syncs, and with nothing dirtied pauses the guest and sends the rest paused.
 * So an idle guest whose last-sent memory is zero pages pauses with little left (a window of zero
 * pages is a few bytes on the wire), and one whose memory ends with data pauses with up to a
 * downtime limit's worth of it (measured: 4–5 MiB sent paused against 20–32, docs/performance.md
 * § Where a prediction's error sits). Pure.
 */
export function firstPassSweep(
  memBytes: number,
  byPart: readonly number[],
  linkBps: number,
  zeroBps: number | null,
  limitMs: number,
): FirstPass {
  const n = byPart.length;
  const part = memBytes / n;
  const share = (i: number): number => Math.min(1, Math.max(0, byPart[i] ?? 0));
  // As predictMove prices the first pass: zero pages at their own rate, else at the floor's share.
  const costMs = (s: number): number =>
    zeroBps === null
      ? ((part * Math.max(s, MIN_WIRE_SHARE)) / linkBps) * 1000
      : ((part * s) / linkBps + (part * (1 - s)) / zeroBps) * 1000;
  const win: Array<{ ms: number; wire: number }> = [];
  let winMs = 0;
  let winWire = 0;
  let ms = 0;
  let sentWire = 0;
  for (let i = 0; i < n; i++) {
    const c = costMs(share(i));
    const w = part * share(i);
    ms += c;
    sentWire += w;
    win.push({ ms: c, wire: w });
    winMs += c;
    winWire += w;
    for (let first = win[0]; first && win.length > 1 && winMs - first.ms >= BANDWIDTH_WINDOW_MS; first = win[0]) {
      win.shift();
      winMs -= first.ms;
      winWire -= first.wire;
    }
    const thresholdBytes = winMs > 0 ? (winWire / winMs) * limitMs : 0;
    const leftBytes = part * (n - 1 - i);
    if (leftBytes < thresholdBytes) {
      let leftWire = 0;
      let leftMs = 0;
      for (let j = i + 1; j < n; j++) {
        leftWire += part * share(j);
        leftMs += costMs(share(j));
      }
      return { ms, sentWire, thresholdBytes, leftBytes, leftWire, leftMs };
    }
  }
  return { ms, sentWire, thresholdBytes: 0, leftBytes: 0, leftWire: 0, leftMs: 0 };
}

/** With no recent move to learn from: a 1 Gbit/s LAN and a second of preparation. */
export const ASSUMED_LINK_BPS = 125_000_000;
export const ASSUMED_OVERHEAD_MS = 1000;
/** A move older than this says little about today's link. */
export const HISTORY_MAX_AGE_MS = 24 * 3600_000;
const HISTORY_MOVES = 5;

export interface LinkEstimate {
  linkBps: number;
  /** bytes/s of zero pages, fitted or at the prior's share of the data's rate (zeroSource). */
  zeroBps?: number;
  zeroSource?: CopyRates['zeroSource'];
  /** A switch-over's cost beyond its last pages, when the records tell it. */
  switchMs?: number;
  overheadMs: number;
  source: 'history' | 'assumed';
}

/**
 * The link's rates and a move's fixed costs to `dest`, from the last few live moves there that
 * completed within a day without a --bandwidth cap:
 * - with QEMU's page counts in the records (`memoryPages`), the rate of data and the rate of zero
 *   pages that best explain each move's pre-copy time by the pages it sent before the pause
 *   (fitCopyRates): a zero page is a few bytes on the wire, but both QEMUs read and handle it,
 *   which here cost an idle 1 GiB guest 1.1–2.5 s more than an idle 256 MiB one for 14 MiB more
 *   data; and the median switch-over cost beyond its last pages (`switchMs`: the downtime less
 *   the bytes sent in it at the data's rate);
 * - else the median rate at which each move carried its bytes through its copy and pause.
 * And the median time spent outside the copy and the pause. QEMU's own last bandwidth sample
 * (the fallback for a record without the copy's events) is one window of the last pass:
 * 150–300 MiB/s here for moves whose bytes went at 80–200. Costs nothing to read; a synthetic
 * test between the agents would measure Node's TLS and spend CPU on both hosts.
 */
export function linkFromHistory(records: readonly MigrationRecord[], dest: string, nowMs: number): LinkEstimate {
  const recent = records
    .filter(
      (r) =>
        r.kind === 'live' &&
        r.state === 'completed' &&
        r.destination === dest &&
        r.finishedAt !== null &&
        nowMs - Date.parse(r.finishedAt) <= HISTORY_MAX_AGE_MS &&
        r.rate.transferBps > 0 &&
        // A move held to --bandwidth measured its cap, not the link (a test's 4.5 MiB/s, once).
        !r.policy.bandwidthMiBps,
    )
    .sort((a, b) => Date.parse(b.finishedAt ?? '') - Date.parse(a.finishedAt ?? ''))
    .slice(0, HISTORY_MOVES);
  if (recent.length === 0) return { linkBps: ASSUMED_LINK_BPS, overheadMs: ASSUMED_OVERHEAD_MS, source: 'assumed' };
  const moves = recent.map((r) => ({ t: moveTimes(r), r }));
  const timed = moves.flatMap(({ t, r }) => (t ? [{ ...t, r }] : []));
  const overheads = timed.map(({ overheadMs }) => overheadMs);
  const overheadMs = overheads.length ? median(overheads) : ASSUMED_OVERHEAD_MS;
  // Each move's pre-copy against the pages it sent before the pause (what went in the pause is the
  // downtime's). Not a post-copy move's: most of its pages came after the switch.
  const precopied = timed.filter(({ r }) => !r.postcopy);
  const points = precopied.flatMap(({ precopyMs, r }) =>
    r.memoryPages
      ? [
          {
            ms: precopyMs,
            dataBytes: Math.max(0, r.memoryPages.dataBytes - (r.pausedBytes ?? 0)),
            zeroBytes: r.memoryPages.zeroPages * PAGE,
          },
        ]
      : [],
  );
  const fit = fitCopyRates(points);
  if (fit) {
    // The pause beyond its last pages at the data's rate: device state, the vCPUs, the handshake.
    const switches = precopied.flatMap(({ downMs, r }) =>
      r.downtimeMs === null || r.pausedBytes === null || r.pausedBytes === undefined
        ? []
        : [Math.max(0, downMs - (r.pausedBytes / fit.dataBps) * 1000)],
    );
    return {
      linkBps: fit.dataBps,
      zeroBps: fit.zeroBps,
      zeroSource: fit.zeroSource,
      ...(switches.length ? { switchMs: median(switches) } : {}),
      overheadMs,
      source: 'history',
    };
  }
  const rates = moves.map(({ t, r }) => {
    const ms = t ? t.precopyMs + t.downMs : 0;
    return ms > 0 && r.bytesTransferred > 0 ? (r.bytesTransferred * 1000) / ms : r.rate.transferBps;
  });
  return { linkBps: median(rates), overheadMs, source: 'history' };
}

/** Where a finished live move's time went, from its record: what a prediction's parts are set against. */
export interface MoveTimes {
  /** The pre-copy, from the copy's start to the guest's pause. */
  precopyMs: number;
  /** The guest paused (the record's downtime). */
  downMs: number;
  /** The rest of the move's total: prepare, the hosts' handshakes, confirm, release. */
  overheadMs: number;
}

/** Null when the record lacks the copy's events or its total. Pure. */
export function moveTimes(r: MigrationRecord): MoveTimes | null {
  const at = (re: RegExp): number | null => {
    const e = r.events.find((x) => re.test(x.message));
    return e ? Date.parse(e.at) : null;
  };
  const copying = at(/^copying memory/);
  const switching = at(/^switching over/);
  if (copying === null || switching === null || r.totalMs === null) return null;
  const precopyMs = Math.max(0, switching - copying);
  const downMs = r.downtimeMs ?? 0;
  return { precopyMs, downMs, overheadMs: Math.max(0, r.totalMs - precopyMs - downMs) };
}

export interface CopyPoint {
  ms: number;
  dataBytes: number;
  zeroBytes: number;
}

/**
 * A zero page's time as a share of a data page's, when the history cannot tell the two apart:
 * measured on the development machine (QEMU 7.2, TCG, TLS; idle 256 MiB and 1 GiB guests and a
 * busy 256 MiB one: ~0.3, docs/performance.md § Sampled data pages and the link's two rates).
 * Free zero pages (0) had a guest with more data than the history's priced several times too slow.
 */
export const ZERO_PAGE_COST_PRIOR = 0.3;

export interface CopyRates {
  dataBps: number;
  zeroBps: number;
  /** history: both rates fitted; assumed: one rate fitted, zero pages at the prior's share of it. */
  zeroSource: 'history' | 'assumed';
}

/**
 * The rates of data and of zero pages that best explain copy times (least squares of
 * ms = data / dataBps + zero / zeroBps, both rates positive). The two are told apart only when the
 * moves mixed them differently (guests of other sizes or use) and the fit is sane (both rates
 * positive, a zero page no dearer than a data page); else one rate is fitted with a zero page at
 * ZERO_PAGE_COST_PRIOR of a data page's time. Null without a usable point. Pure.
 */
export function fitCopyRates(points: readonly CopyPoint[]): CopyRates | null {
  // In seconds and MiB, so that the sums stay well inside a double's precision.
  const ps = points
    .filter((p) => p.ms > 0 && p.dataBytes > 0)
    .map((p) => ({ t: p.ms / 1000, d: p.dataBytes / MiB, z: p.zeroBytes / MiB }));
  if (ps.length === 0) return null;
  const sum = (f: (p: { t: number; d: number; z: number }) => number): number => ps.reduce((a, p) => a + f(p), 0);
  const sdd = sum((p) => p.d * p.d);
  const szz = sum((p) => p.z * p.z);
  const sdz = sum((p) => p.d * p.z);
  const std = sum((p) => p.t * p.d);
  const stz = sum((p) => p.t * p.z);
  const rate = (secPerMiB: number): number => MiB / secPerMiB;
  const det = sdd * szz - sdz * sdz;
  // Told apart only when the data-to-zero mix varied: the two columns' correlation² under 0.98.
  if (szz > 0 && det > 0.02 * sdd * szz) {
    const a = (std * szz - stz * sdz) / det;
    const c = (stz * sdd - std * sdz) / det;
    if (a > 0 && c > 0 && c <= a) return { dataBps: rate(a), zeroBps: rate(c), zeroSource: 'history' };
  }
  // One rate: each move's pages weighed as data + prior × zero.
  const w = (p: { d: number; z: number }): number => p.d + ZERO_PAGE_COST_PRIOR * p.z;
  const b = sum((p) => p.t * w(p)) / sum((p) => w(p) ** 2);
  return b > 0 ? { dataBps: rate(b), zeroBps: rate(b * ZERO_PAGE_COST_PRIOR), zeroSource: 'assumed' } : null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  const hi = s[m] ?? 0;
  return s.length % 2 ? hi : ((s[m - 1] ?? hi) + hi) / 2;
}

/** One line for people: what the move will do and how long it will take. */
export function describePrediction(p: Omit<Prediction, 'summary'>): string {
  const s = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
  const how: Record<PredictedStep, string> = {
    'pre-copy': 'converges by plain pre-copy',
    'raise-downtime': `converges once the downtime limit is raised to ${p.downtimeLimitMs} ms`,
    'auto-converge': `converges only with the guest's vCPUs throttled (up to ${p.throttlePct} %)`,
    'post-copy': 'does not converge in pre-copy; switches to post-copy',
    abort: `does not converge within ${s(p.finishWithinMs)} and would be given up`,
  };
  const down = p.downtimeMs === null ? '' : `, downtime ~${p.downtimeMs} ms`;
  return `${how[p.step]}: ~${s(p.totalMs)} in ${p.passes} pass(es)${down} (max ${p.maxDowntimeMs} ms)`;
}
