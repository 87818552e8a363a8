import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ASSUMED_LINK_BPS,
  ASSUMED_OVERHEAD_MS,
  describePrediction,
  fitCopyRates,
  firstPassSweep,
  linkFromHistory,
  ZERO_PAGE_COST_PRIOR,
  predictMove,
  type PredictInput,
} from '../../src/migration/predict.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

const MiB = 1024 * 1024;
const base: PredictInput = {
  memoryMiB: 1024,
  dirtyBps: 0,
  linkBps: 100 * MiB,
  overheadMs: 500,
  maxDowntimeMs: 500,
  startDowntimeMs: 20,
  finishWithinMs: 90_000,
  allowPostcopy: false,
};

test('an idle guest: one pass of all its memory, no downtime to speak of, plain pre-copy', () => {
  const p = predictMove(base);
  assert.equal(p.step, 'pre-copy');
  assert.equal(p.converges, true);
  // QEMU's count, as the record's: its setup's sync, the pass's end, the switch-over's.
  assert.equal(p.passes, 3);
  assert.equal(p.downtimeMs, 0);
  // 1024 MiB at 100 MiB/s, plus the fixed cost.
  assert.equal(p.totalMs, 500 + 10_240);
});

test("an idle guest's first pass costs only what it puts on the wire (zero pages are a few bytes)", () => {
  const p = predictMove({ ...base, wireShare: 0.25 });
  assert.equal(p.passes, 3);
  // A quarter of 1024 MiB at 100 MiB/s, plus the fixed cost.
  assert.equal(p.totalMs, 500 + 2560);
  // An all-zero guest still costs the floor's share (QEMU reads every page), and more than 1 is 1.
  assert.equal(predictMove({ ...base, wireShare: 0 }).totalMs, 500 + 512);
  assert.equal(predictMove({ ...base, wireShare: 3 }).totalMs, predictMove(base).totalMs);
});

test('the wire share only shortens the first pass: what the guest writes meanwhile is data', () => {
  const full = predictMove({ ...base, dirtyBps: 20 * MiB });
  const half = predictMove({ ...base, dirtyBps: 20 * MiB, wireShare: 0.5 });
  // The first pass takes 5.12 s instead of 10.24, so the guest dirties half as much during it.
  assert.ok(half.totalMs < full.totalMs, `${half.totalMs} < ${full.totalMs}`);
  assert.ok(Math.abs(half.totalMs - (500 + 5120 * 1.25)) < 20, `total ${half.totalMs}`);
  assert.ok(half.passes <= full.passes);
});

test('a guest dirtying at a fifth of the link converges in a few passes at the first downtime limit', () => {
  const p = predictMove({ ...base, dirtyBps: 20 * MiB });
  assert.equal(p.step, 'pre-copy');
  assert.equal(p.converges, true);
  // Each pass sends a fifth of the one before: 10.24 s, 2.05 s, 0.41 s, 0.08 s, then ≤ 20 ms is left
  // (4 passes: 6 syncs with the setup's and the switch-over's).
  assert.equal(p.passes, 6);
  assert.ok(p.downtimeMs! <= 20 && p.downtimeMs! > 0, `downtime ${p.downtimeMs}`);
  assert.ok(Math.abs(p.totalMs - (500 + 10_240 * 1.25)) < 20, `total ${p.totalMs}`);
});

test('a guest dirtying at 95 % of the link stalls: the policy raises the downtime limit and then it converges', () => {
  const p = predictMove({ ...base, memoryMiB: 64, dirtyBps: 95 * MiB, maxDowntimeMs: 1000 });
  assert.equal(p.step, 'raise-downtime');
  assert.equal(p.converges, true);
  assert.ok(p.downtimeLimitMs > 20 && p.downtimeLimitMs <= 1000, `limit ${p.downtimeLimitMs}`);
  assert.ok(p.downtimeMs! <= p.downtimeLimitMs);
});

test('a guest dirtying faster than the link needs the throttle (auto-converge) or is given up', () => {
  const p = predictMove({ ...base, dirtyBps: 150 * MiB });
  assert.ok(p.step === 'auto-converge' || p.step === 'abort', p.step);
  assert.ok(p.throttlePct >= 20);
  if (p.step === 'auto-converge') assert.ok(p.downtimeMs! <= 500);
});

test('a guest dirtying all its memory at several times the link: given up at --finish-within, or post-copy', () => {
  const wild = { ...base, dirtyBps: 2000 * MiB, finishWithinMs: 30_000 };
  const given = predictMove(wild);
  assert.equal(given.step, 'abort');
  assert.equal(given.converges, false);
  assert.equal(given.downtimeMs, null);
  assert.ok(given.totalMs >= 30_000 && given.totalMs < 45_000, `total ${given.totalMs}`);
  const post = predictMove({ ...wild, allowPostcopy: true });
  assert.equal(post.step, 'post-copy');
  assert.equal(post.converges, false);
  assert.ok(post.downtimeMs! > 0 && post.downtimeMs! < 500);
  assert.ok(post.totalMs > given.totalMs, 'post-copy still sends the rest');
});

test('a longer allowed downtime never predicts a slower or less convergent move', () => {
  for (const dirty of [0, 10, 50, 90, 99, 120]) {
    const tight = predictMove({ ...base, dirtyBps: dirty * MiB, maxDowntimeMs: 50 });
    const loose = predictMove({ ...base, dirtyBps: dirty * MiB, maxDowntimeMs: 2000 });
    assert.ok(loose.totalMs <= tight.totalMs + 1, `dirty ${dirty}: ${loose.totalMs} > ${tight.totalMs}`);
    if (tight.converges) assert.equal(loose.converges, true);
  }
});

test('the summary says the step and the figures', () => {
  const p = predictMove({ ...base, dirtyBps: 20 * MiB });
  const line = describePrediction({
    ...p,
    madeAt: '2026-01-01T00:00:00Z',
    memoryMiB: 1024,
    dirtyRateMiBps: 20,
    dirtyMode: 'page-sampling',
    dirtySampleMs: 1000,
    linkMiBps: 100,
    linkSource: 'history',
    overheadMs: 500,
    maxDowntimeMs: 500,
    finishWithinMs: 90_000,
  });
  assert.match(line, /^converges by plain pre-copy: ~13\.3 s in 6 pass\(es\), downtime ~\d+ ms \(max 500 ms\)$/);
});

function rec(over: Partial<MigrationRecord> & { copyMs?: number }): MigrationRecord {
  const finished = over.finishedAt ?? '2026-01-01T11:00:00.000Z';
  const copyStart = Date.parse(finished) - 1000;
  return {
    kind: 'live',
    state: 'completed',
    destination: 'host-b',
    finishedAt: finished,
    totalMs: 2000,
    downtimeMs: 100,
    rate: { transferBps: 50 * MiB, dirtyBps: 0 },
    policy: {} as MigrationRecord['policy'],
    events: [
      { at: new Date(copyStart).toISOString(), message: 'copying memory to host-b (TLS)' },
      { at: new Date(copyStart + (over.copyMs ?? 600)).toISOString(), message: 'switching over (source paused)' },
    ],
    ...over,
  } as MigrationRecord;
}

test('the link: the median rate recent moves there carried their bytes at, the median time outside the copy', () => {
  const now = Date.parse('2026-01-01T12:00:00Z');
  const est = linkFromHistory(
    [
      // Bytes over the copy and the downtime (100 ms): 50, 100 and 80 MiB/s; QEMU's last sample is not used.
      rec({ bytesTransferred: 35 * MiB, rate: { transferBps: 400 * MiB, dirtyBps: 0 }, copyMs: 600 }),
      rec({ bytesTransferred: 90 * MiB, copyMs: 800 }),
      rec({ bytesTransferred: 88 * MiB, copyMs: 1000 }),
      // A record without the copy's events: QEMU's rate, and no fixed cost to learn.
      rec({ bytesTransferred: 1 * MiB, rate: { transferBps: 60 * MiB, dirtyBps: 0 }, events: [] }),
      rec({ destination: 'host-c', bytesTransferred: 900 * MiB }),
      rec({ state: 'failed', bytesTransferred: 900 * MiB }),
      rec({ finishedAt: '2025-12-30T11:00:00.000Z', bytesTransferred: 900 * MiB }),
      // Held to --bandwidth: its rate is the cap's.
      rec({ bytesTransferred: 1 * MiB, policy: { bandwidthMiBps: 1 } as MigrationRecord['policy'], copyMs: 1000 }),
    ],
    'host-b',
    now,
  );
  assert.equal(est.source, 'history');
  assert.equal(est.linkBps, 70 * MiB);
  // 2000 total − (copy + 100 downtime): 1300, 1100, 900.
  assert.equal(est.overheadMs, 1100);
});

test('a guest that rewrites the same memory dirties no more of it in a long pass', () => {
  // QEMU's limit at --max-downtime from the start, so that the ladder does not step in.
  const busy = { ...base, dirtyBps: 50 * MiB, startDowntimeMs: 500 };
  const spread = predictMove(busy);
  const same = predictMove({ ...busy, workingSetBytes: 64 * MiB });
  // Pass 1: 1024 MiB in 10.24 s, dirtying its 64 MiB (not 512); pass 2: 640 ms, 32 MiB; 320 ms left.
  assert.equal(same.passes, 4);
  assert.equal(same.downtimeMs, 320);
  assert.equal(same.totalMs, 500 + 10_240 + 640 + 320);
  assert.ok(spread.passes > same.passes && spread.totalMs > same.totalMs, JSON.stringify(spread));
});

test('zero pages priced at their own rate when it is known: the floor then no longer applies', () => {
  // A quarter of 1024 MiB of data at 100 MiB/s, three quarters of zero pages at 400 MiB/s.
  assert.equal(predictMove({ ...base, wireShare: 0.25, zeroBps: 400 * MiB }).totalMs, 500 + 2560 + 1920);
  assert.equal(predictMove({ ...base, wireShare: 0, zeroBps: 400 * MiB }).totalMs, 500 + 2560);
});

test('the rates of data and of zero pages are told apart by moves that mixed them differently', () => {
  const ms = (d: number, z: number): number => ((d / 200 + z / 500) * 1000) | 0;
  // Idle 256 MiB, idle 1 GiB, a busy 256 MiB guest (MiB of data, MiB of zero pages).
  const mixes = [
    [91, 165],
    [106, 918],
    [230, 26],
  ] as const;
  const fit = fitCopyRates(mixes.map(([d, z]) => ({ ms: ms(d, z), dataBytes: d * MiB, zeroBytes: z * MiB })));
  assert.equal(fit?.zeroSource, 'history', JSON.stringify(fit));
  assert.ok(Math.abs(fit.dataBps / MiB - 200) < 1, `data ${fit.dataBps / MiB}`);
  assert.ok(Math.abs(fit.zeroBps / MiB - 500) < 5, `zero ${fit.zeroBps / MiB}`);
});

test('moves that all mixed data and zero pages alike give one rate, zero pages at the prior share', () => {
  const same = [1000, 1200].map((ms) => ({ ms, dataBytes: 100 * MiB, zeroBytes: 150 * MiB }));
  // Least squares through the origin on data + 0.3 × zero: 145 MiB-equivalents in 1.1 s.
  const fit = fitCopyRates(same);
  assert.equal(fit?.zeroSource, 'assumed');
  const dataMiBps = (100 + ZERO_PAGE_COST_PRIOR * 150) / 1.1;
  assert.ok(Math.abs(fit.dataBps / MiB - dataMiBps) < 0.01, JSON.stringify(fit));
  assert.ok(Math.abs(fit.zeroBps / MiB - dataMiBps / ZERO_PAGE_COST_PRIOR) < 0.1, JSON.stringify(fit));
  // Noise that would make zero pages speed a move up is not believed either.
  const odd = fitCopyRates([
    { ms: 2000, dataBytes: 200 * MiB, zeroBytes: 0 },
    { ms: 900, dataBytes: 100 * MiB, zeroBytes: 900 * MiB },
  ]);
  assert.equal(odd?.zeroSource, 'assumed');
  // Nor a zero page dearer than a data page.
  const dear = fitCopyRates([
    { ms: 1000, dataBytes: 100 * MiB, zeroBytes: 0 },
    { ms: 11_000, dataBytes: 100 * MiB, zeroBytes: 500 * MiB },
  ]);
  assert.equal(dear?.zeroSource, 'assumed');
  assert.equal(fitCopyRates([]), null);
  assert.equal(fitCopyRates([{ ms: 0, dataBytes: MiB, zeroBytes: 0 }]), null);
});

test("the history's page counts teach the link both rates, and the switch-over's own cost", () => {
  const now = Date.parse('2026-01-01T12:00:00Z');
  // Pre-copy = data sent before the pause / 200 MiB/s + zero / 500 MiB/s; 2 MiB in the 100 ms pause.
  const mk = (d: number, z: number) =>
    rec({
      bytesTransferred: (d + 2) * MiB,
      pausedBytes: 2 * MiB,
      memoryPages: { dataBytes: (d + 2) * MiB, zeroPages: (z * MiB) / 4096 },
      copyMs: Math.round((d / 200 + z / 500) * 1000),
    });
  // A post-copy move's pages mostly came after its switch: it says nothing of the pre-copy's rates.
  const postcopy = rec({
    bytesTransferred: 1000 * MiB,
    pausedBytes: 0,
    memoryPages: { dataBytes: 1000 * MiB, zeroPages: 0 },
    copyMs: 500,
    postcopy: {
      switchedAt: '2026-01-01T10:59:59.500Z',
      afterMs: 500,
      downtimeMs: 50,
      guestPauseMs: 60,
      bytes: 900 * MiB,
      durationMs: 4000,
      lost: false,
    },
  });
  const est = linkFromHistory([mk(91, 165), mk(106, 918), postcopy, mk(230, 26)], 'host-b', now);
  assert.ok(Math.abs(est.linkBps / MiB - 200) < 2, `data ${est.linkBps / MiB}`);
  assert.ok(est.zeroBps !== undefined && Math.abs(est.zeroBps / MiB - 500) < 10, `zero ${est.zeroBps}`);
  // 100 ms of downtime, 10 of them the 2 MiB at 200 MiB/s.
  assert.ok(est.switchMs !== undefined && Math.abs(est.switchMs - 90) < 1, `switch ${est.switchMs}`);
  // The pause holds it: a predicted downtime is the last pages plus the switch-over's own cost.
  const idle = predictMove({ ...base, switchMs: 90 });
  assert.equal(idle.downtimeMs, 90);
  assert.equal(idle.totalMs, predictMove(base).totalMs + 90);
});

test('no recent move there: the link and the fixed cost are assumed, and say so', () => {
  const est = linkFromHistory([rec({ destination: 'host-c' })], 'host-b', Date.parse('2026-01-01T12:00:00Z'));
  assert.deepEqual(est, { linkBps: ASSUMED_LINK_BPS, overheadMs: ASSUMED_OVERHEAD_MS, source: 'assumed' });
});

test("an idle guest's downtime follows where its data lies: QEMU pauses it with what is left of the first pass", () => {
  // 256 parts of a 1024 MiB guest, a third of them data; QEMU's downtime limit 500 ms here.
  const idle = { ...base, startDowntimeMs: 500, zeroBps: 400 * MiB };
  const dataFirst = Array.from({ length: 256 }, (_, i) => (i < 85 ? 1 : 0));
  const dataLast = [...dataFirst].reverse();
  const early = predictMove({ ...idle, wireShare: 85 / 256, wireByPart: dataFirst });
  const late = predictMove({ ...idle, wireShare: 85 / 256, wireByPart: dataLast });
  // The last window was zero pages (a few bytes on the wire): the threshold is ~0, nothing is left.
  assert.equal(early.downtimeMs, 0);
  // Data at the end: 100 MiB/s of data × 500 ms = 50 MiB, so 12 whole parts of 4 MiB are left,
  // sent paused at the link's rate.
  assert.equal(late.downtimeMs, 480);
  // The whole move takes as long either way: the tail is sent paused instead of live.
  assert.ok(Math.abs(late.totalMs - early.totalMs) < 15, `${late.totalMs} against ${early.totalMs}`);
  assert.equal(late.passes, 3);
  // Without the parts, the first pass is priced whole, as before.
  assert.equal(predictMove({ ...idle, wireShare: 85 / 256 }).downtimeMs, 0);
});

test('the first pass swept part by part: QEMU syncs once the pages left are under its last window × the limit', () => {
  const mem = 256 * MiB;
  // Evenly half data: each 1 MiB part costs 5 ms of data and 1.25 ms of zero pages.
  const half = firstPassSweep(mem, new Array<number>(256).fill(0.5), 100 * MiB, 400 * MiB, 300);
  // The window carries 0.5 MiB per 6.25 ms: 80 MiB/s × 300 ms = 24 MiB; 23 whole parts are under it.
  assert.equal(half.leftBytes, 23 * MiB);
  assert.ok(Math.abs(half.thresholdBytes / MiB - 24) < 0.01, `threshold ${half.thresholdBytes / MiB}`);
  assert.ok(Math.abs(half.leftMs - 23 * 6.25) < 0.01, `left ${half.leftMs} ms`);
  assert.ok(Math.abs(half.ms + half.leftMs - 256 * 6.25) < 0.01);
  // All zero: never under a threshold of zero; the pass ends with nothing left.
  const zero = firstPassSweep(mem, new Array<number>(256).fill(0), 100 * MiB, 400 * MiB, 300);
  assert.deepEqual([zero.leftBytes, zero.leftMs], [0, 0]);
});
