import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ConvergencePolicy,
  defaultFinishWithinMs,
  UNLIMITED_BANDWIDTH,
  START_DOWNTIME_MS,
  type Decision,
  type PolicyOptions,
} from '../../src/migration/policy.js';
import { sampleFrom, newProgress, update, type Sample, type Verdict } from '../../src/migration/progress.js';
import type { MigrationInfo, MigrationRamStats } from '../../src/qemu/commands.js';

const MiB = 1024 * 1024;

/** A complete QEMU 7.2 `ram` block (128 MiB pc-i440fx-7.2 guest); counters derived from `transferred`. */
function ram(over: Partial<MigrationRamStats> = {}): MigrationRamStats {
  const pageSize = over['page-size'] ?? 4096;
  const transferred = over.transferred ?? 27002302;
  const normal = Math.floor(transferred / pageSize);
  return {
    transferred,
    remaining: 106889216,
    total: 134750208,
    duplicate: 1,
    skipped: 0,
    normal,
    'normal-bytes': normal * pageSize,
    'dirty-pages-rate': 0,
    mbps: 240.0,
    'dirty-sync-count': 1,
    'postcopy-requests': 0,
    'page-size': pageSize,
    'multifd-bytes': 0,
    'pages-per-second': 7312,
    'precopy-bytes': transferred,
    'downtime-bytes': 0,
    'postcopy-bytes': 0,
    ...over,
  };
}

function active(r: Partial<MigrationRamStats> = {}, extra: Partial<MigrationInfo> = {}): MigrationInfo {
  return { status: 'active', 'setup-time': 12, 'total-time': 807, 'expected-downtime': 50, ram: ram(r), ...extra };
}

/** A sample of pass `pass` of a busy guest: 240 Mbit/s link, 6000 pages/s dirtied. */
function at(pass: number, over: Partial<MigrationRamStats> = {}, extra: Partial<MigrationInfo> = {}): Sample {
  const s = sampleFrom(
    active(
      {
        'dirty-sync-count': pass,
        'dirty-pages-rate': 6000,
        remaining: 24 * MiB,
        transferred: 134_000_000 + pass * 24 * MiB,
        ...over,
      },
      extra,
    ),
    pass * 1000,
  );
  assert.ok(s);
  return s;
}

function policy(over: Partial<PolicyOptions> = {}): ConvergencePolicy {
  return new ConvergencePolicy({ maxDowntimeMs: 300, finishWithinMs: 120_000, allowPostcopy: false, ...over });
}

function only(ds: Decision[]): Decision {
  assert.equal(ds.length, 1, `one decision expected, got ${JSON.stringify(ds)}`);
  return ds[0]!;
}

function downtimeOf(d: Decision): number | undefined {
  if (d.kind !== 'set-parameters') assert.fail(`expected set-parameters, got ${d.kind}`);
  return d.params['downtime-limit'];
}

// ---------------------------------------------------------------- initialParameters

test('initialParameters: unlimited bandwidth by default, downtime 20 ms, throttle armed only at 100%', () => {
  const p = policy();
  assert.equal(START_DOWNTIME_MS, 20);
  assert.equal(UNLIMITED_BANDWIDTH, 100 * 1024 ** 3);
  assert.deepEqual(p.initialParameters(), {
    'max-bandwidth': 107374182400,
    'downtime-limit': 20,
    'cpu-throttle-initial': 20,
    'cpu-throttle-increment': 10,
    'max-cpu-throttle': 99,
    'throttle-trigger-threshold': 100,
  });
  assert.equal(p.downtimeMs, 20);
  assert.equal(p.step, 0);
  assert.equal(p.throttling, false);
  assert.equal(p.postcopy, false);
});

test('initialParameters: max-bandwidth from bandwidthBps, rounded to an integer', () => {
  assert.equal(policy({ bandwidthBps: 50 * MiB }).initialParameters()['max-bandwidth'], 52428800);
  assert.equal(policy({ bandwidthBps: 1234.6 }).initialParameters()['max-bandwidth'], 1235);
  assert.equal(policy({ bandwidthBps: 0.5 * MiB }).initialParameters()['max-bandwidth'], 524288);
});

test('initialParameters: downtime-limit is min(20 ms, max downtime)', () => {
  assert.equal(policy({ maxDowntimeMs: 10 }).initialParameters()['downtime-limit'], 10);
  assert.equal(policy({ maxDowntimeMs: 20 }).initialParameters()['downtime-limit'], 20);
  assert.equal(policy({ maxDowntimeMs: 21 }).initialParameters()['downtime-limit'], 20);
  assert.equal(policy({ maxDowntimeMs: 2000 }).initialParameters()['downtime-limit'], 20);
  assert.equal(policy({ maxDowntimeMs: 10 }).downtimeMs, 10);
});

// ---------------------------------------------------------------- the ladder

test('ladder: stalled at each pass end doubles the downtime up to the max, then throttles once, then waits', () => {
  const p = policy({ maxDowntimeMs: 300 });
  const limits: Array<number | undefined> = [];
  // expected-downtime below 2× the limit, so plain doubling applies
  for (let pass = 2; pass <= 5; pass++)
    limits.push(downtimeOf(only(p.onSample(at(pass, {}, { 'expected-downtime': 30 }), 'stalled', pass * 1000))));
  assert.deepEqual(limits, [40, 80, 160, 300]);
  assert.equal(p.downtimeMs, 300);
  assert.equal(p.step, 4);
  assert.equal(p.throttling, false);

  const t = only(p.onSample(at(6, {}, { 'expected-downtime': 30 }), 'stalled', 6000));
  assert.deepEqual(t, {
    kind: 'set-parameters',
    params: { 'throttle-trigger-threshold': 50 },
    reason: "stalled at the maximum downtime: throttling the guest's vCPUs (auto-converge)",
  });
  assert.equal(p.throttling, true);
  assert.equal(p.step, 5);

  for (let pass = 7; pass <= 20; pass++) assert.deepEqual(p.onSample(at(pass), 'stalled', pass * 1000), []);
  for (let pass = 21; pass <= 25; pass++) assert.deepEqual(p.onSample(at(pass), 'not-converging', pass * 1000), []);
  assert.equal(p.step, 5);
  assert.equal(p.downtimeMs, 300);
});

test('ladder: the decision reason names the verdict and the new limit', () => {
  const p = policy();
  const d = only(p.onSample(at(2, {}, { 'expected-downtime': 25 }), 'not-converging', 2000));
  assert.deepEqual(d, {
    kind: 'set-parameters',
    params: { 'downtime-limit': 40 },
    reason: 'not-converging: downtime limit raised to 40 ms',
  });
  const d2 = only(p.onSample(at(3, {}, { 'expected-downtime': 25 }), 'stalled', 3000));
  assert.equal(d2.reason, 'stalled: downtime limit raised to 80 ms');
});

test("ladder: jumps straight to QEMU's expected downtime when that is more than doubling", () => {
  const p = policy({ maxDowntimeMs: 300 });
  assert.equal(downtimeOf(only(p.onSample(at(2, {}, { 'expected-downtime': 250 }), 'stalled', 2000))), 250);
  assert.equal(p.downtimeMs, 250);
  // next: ×2 = 500 capped at 300
  assert.equal(downtimeOf(only(p.onSample(at(3, {}, { 'expected-downtime': 260 }), 'stalled', 3000))), 300);
});

test('ladder: an expected downtime beyond the max is capped at the max', () => {
  // the TLS case of QEMU-NOTES: expected-downtime 614 ms
  const p = policy({ maxDowntimeMs: 500 });
  assert.equal(downtimeOf(only(p.onSample(at(2, {}, { 'expected-downtime': 614 }), 'stalled', 2000))), 500);
  assert.equal(p.downtimeMs, 500);
  assert.equal(p.step, 1);
  // at the max now: the next stalled pass throttles
  assert.deepEqual(only(p.onSample(at(3, {}, { 'expected-downtime': 614 }), 'stalled', 3000)).kind, 'set-parameters');
  assert.equal(p.throttling, true);
});

test('ladder: without expected-downtime it doubles', () => {
  const p = policy({ maxDowntimeMs: 1000 });
  const s: Sample = { ...at(2), expectedDowntimeMs: null };
  assert.equal(downtimeOf(only(p.onSample(s, 'stalled', 2000))), 40);
  assert.equal(downtimeOf(only(p.onSample({ ...at(3), expectedDowntimeMs: null }, 'stalled', 3000))), 80);
});

test('ladder: doubling is capped at the max', () => {
  const p = policy({ maxDowntimeMs: 30 });
  assert.equal(downtimeOf(only(p.onSample(at(2, {}, { 'expected-downtime': 5 }), 'stalled', 2000))), 30);
  assert.equal(p.downtimeMs, 30);
});

test('ladder: already at the max downtime (max ≤ 20 ms) → the first stalled pass throttles, exactly once', () => {
  const p = policy({ maxDowntimeMs: 10 });
  const d = only(p.onSample(at(2), 'stalled', 2000));
  assert.deepEqual(d.kind === 'set-parameters' && d.params, { 'throttle-trigger-threshold': 50 });
  assert.equal(p.downtimeMs, 10);
  assert.deepEqual(p.onSample(at(3), 'stalled', 3000), []);
  assert.deepEqual(p.onSample(at(4), 'not-converging', 4000), []);
  assert.equal(p.step, 1);
});

test('ladder: one decision per pass, however many samples that pass has', () => {
  const p = policy({ maxDowntimeMs: 5000 });
  assert.equal(only(p.onSample(at(2, { remaining: 24 * MiB }), 'stalled', 2000)).kind, 'set-parameters');
  for (let i = 0; i < 10; i++)
    assert.deepEqual(p.onSample(at(2, { remaining: (20 - i) * MiB }), 'stalled', 2100 + i * 250), []);
  assert.equal(p.downtimeMs, 50); // QEMU's expected-downtime of the sample
  assert.equal(p.step, 1);
  // the next pass may decide again
  assert.equal(downtimeOf(only(p.onSample(at(3), 'stalled', 5000))), 100); // 2 × 50
  assert.deepEqual(p.onSample(at(3), 'not-converging', 5250), []);
});

test('ladder: converging → no decisions at all', () => {
  const p = policy();
  for (let pass = 1; pass <= 30; pass++) assert.deepEqual(p.onSample(at(pass), 'converging', pass * 1000), []);
  assert.equal(p.downtimeMs, 20);
  assert.equal(p.step, 0);
  assert.equal(p.throttling, false);
});

test('ladder: a null verdict (nothing judged yet) → no decision', () => {
  const p = policy();
  assert.deepEqual(p.onSample(at(1), null, 500), []);
  assert.equal(p.step, 0);
});

test('ladder: a converging sample does not use up the pass', () => {
  const p = policy();
  assert.deepEqual(p.onSample(at(2), 'converging', 2000), []);
  assert.equal(downtimeOf(only(p.onSample(at(2, {}, { 'expected-downtime': 30 }), 'stalled', 2250))), 40);
  assert.deepEqual(p.onSample(at(2), 'stalled', 2500), []);
});

test('ladder: driven by real progress verdicts over a stalled guest', () => {
  const p = policy({ maxDowntimeMs: 100, finishWithinMs: 600_000 });
  let st = newProgress();
  const decisions: Decision[] = [];
  let t = 0;
  // pass 1 bulk copy, then every pass leaves ~24 MiB behind (±3%): stalled from pass 3 on
  const rems = [24, 24.5, 23.8, 24.2, 24.1, 23.9, 24.3];
  const seq: Sample[] = [at(1, { remaining: 106889216, transferred: 27002302, 'dirty-pages-rate': 0 })];
  rems.forEach((r, i) => {
    seq.push(at(i + 2, { remaining: Math.round(r * MiB) }, { 'expected-downtime': 60 }));
    seq.push(at(i + 2, { remaining: Math.round((r / 2) * MiB) }, { 'expected-downtime': 60 }));
  });
  const verdicts: Array<Verdict | null> = [];
  for (const s of seq) {
    st = update(st, s, [0.05, 0.97]);
    verdicts.push(st.verdict);
    t += 250;
    decisions.push(...p.onSample(s, st.verdict, t));
  }
  assert.equal(verdicts[2], 'converging'); // first pass end: nothing to compare
  assert.equal(verdicts[3], 'stalled');
  assert.deepEqual(
    decisions.map((d) => (d.kind === 'set-parameters' ? d.params : d.kind)),
    [
      { 'downtime-limit': 60 }, // pass 3: jump to expected 60 (> 2×20)
      { 'downtime-limit': 100 }, // pass 4: 120 capped at 100
      { 'throttle-trigger-threshold': 50 }, // pass 5
    ],
  );
});

// ---------------------------------------------------------------- the budget

test('budget: past finishWithinMs → abort naming the dirty rate, the bandwidth (MiB/s) and the flags', () => {
  const p = policy({ finishWithinMs: 90_000 });
  // 240 Mbit/s = 30 000 000 B/s = 28.6 MiB/s; 7500 pages/s × 4 KiB = 29.3 MiB/s; 12 MiB left
  const s = at(40, { 'dirty-pages-rate': 7500, remaining: 12 * MiB });
  const d = only(p.onSample(s, 'not-converging', 90_000));
  assert.equal(d.kind, 'abort');
  assert.match(d.reason, /29\.3 MiB\/s/);
  assert.match(d.reason, /28\.6 MiB\/s of bandwidth/);
  assert.match(d.reason, /12\.0 MiB still to copy/);
  assert.match(d.reason, /within 90 s/);
  for (const flag of ['--max-downtime', '--finish-within', '--bandwidth', '--allow-postcopy'])
    assert.ok(d.reason.includes(flag), `reason names ${flag}: ${d.reason}`);
  assert.equal(d.reason.indexOf('29.3') < d.reason.indexOf('28.6'), true, 'dirty rate first, then bandwidth');
  assert.equal(p.postcopy, false);
});

test('budget: nothing more after an abort', () => {
  const p = policy({ finishWithinMs: 10_000 });
  assert.equal(only(p.onSample(at(5), 'stalled', 10_001)).kind, 'abort');
  assert.deepEqual(p.onSample(at(5), 'stalled', 10_250), []);
  assert.deepEqual(p.onSample(at(6), 'stalled', 11_000), []);
  assert.deepEqual(p.onSample(at(7), 'not-converging', 60_000), []);
  assert.equal(p.downtimeMs, 20);
});

test('budget: with allowPostcopy → start-postcopy instead of abort, once, then nothing', () => {
  const p = policy({ finishWithinMs: 60_000, allowPostcopy: true });
  const d = only(p.onSample(at(30, { 'dirty-pages-rate': 7500 }), 'stalled', 61_000));
  assert.equal(d.kind, 'start-postcopy');
  assert.match(d.reason, /budget of 60 s spent/);
  assert.match(d.reason, /29\.3 MiB\/s against 28\.6 MiB\/s/);
  assert.match(d.reason, /post-copy/);
  assert.equal(p.postcopy, true);
  assert.deepEqual(p.onSample(at(30), 'stalled', 61_250), []);
  assert.deepEqual(p.onSample(at(31), 'not-converging', 62_000), []);
  assert.deepEqual(p.onSample(at(32), 'stalled', 500_000), []);
});

/** A sample at `atMs` whose byte counter reads `bytes` (the link's health is judged from it). */
function moved(atMs: number, bytes: number): Sample {
  return { ...at(30), atMs, transferredBytes: bytes };
}

test('post-copy guard: a link that moves data now and did not stall lately → start-postcopy', () => {
  const p = policy({ finishWithinMs: 60_000, allowPostcopy: true });
  for (let t = 40_000; t < 60_000; t += 250) assert.deepEqual(p.onSample(moved(t, t * 1000), 'converging', t - 1), []);
  assert.equal(p.linkProblem(59_750), null);
  assert.equal(only(p.onSample(moved(60_000, 60_000_000), 'stalled', 60_000)).kind, 'start-postcopy');
});

test('post-copy guard: no data moved for more than HEALTHY_GAP_MS at the budget → abort, the guest stays', () => {
  const p = policy({ finishWithinMs: 60_000, allowPostcopy: true });
  assert.deepEqual(p.onSample(moved(50_000, 5), 'converging', 50_000), []);
  assert.deepEqual(p.onSample(moved(55_000, 5), 'converging', 55_000), []);
  assert.equal(p.linkProblem(55_000), 'no data moved for the last 5.0 s');
  const d = only(p.onSample(moved(60_000, 5), 'stalled', 60_000));
  assert.equal(d.kind, 'abort');
  assert.match(
    d.reason,
    /post-copy was allowed but refused because the link is not healthy \(no data moved for the last 10\.0 s\)/,
  );
  assert.match(d.reason, /loses the guest on both hosts/);
  assert.equal(p.postcopy, false);
});

test('post-copy guard: a stall that ended within HEALTHY_WINDOW_MS still refuses; an older one does not', () => {
  const recent = policy({ finishWithinMs: 60_000, allowPostcopy: true });
  recent.onSample(moved(50_000, 1), 'converging', 50_000);
  recent.onSample(moved(54_000, 1), 'converging', 54_000);
  recent.onSample(moved(54_250, 2), 'converging', 54_250);
  const d = only(recent.onSample(moved(60_000, 3), 'stalled', 60_000));
  assert.equal(d.kind, 'abort');
  assert.match(d.reason, /stood still for 4\.0 s in the last 10 s/);

  const old = policy({ finishWithinMs: 60_000, allowPostcopy: true });
  old.onSample(moved(40_000, 1), 'converging', 40_000);
  old.onSample(moved(44_000, 1), 'converging', 44_000);
  old.onSample(moved(44_250, 2), 'converging', 44_250);
  assert.equal(only(old.onSample(moved(60_000, 3), 'stalled', 60_000)).kind, 'start-postcopy');
});

test('post-copy guard: samples far apart whose counter moved are no stall', () => {
  const p = policy({ finishWithinMs: 60_000, allowPostcopy: true });
  p.onSample(moved(30_000, 1), 'converging', 30_000);
  p.onSample(moved(45_000, 2), 'converging', 45_000);
  assert.equal(only(p.onSample(moved(60_000, 3), 'stalled', 60_000)).kind, 'start-postcopy');
});

test('budget: applies exactly at finishWithinMs, not a millisecond before', () => {
  const before = policy({ finishWithinMs: 30_000 });
  assert.deepEqual(before.onSample(at(3), 'converging', 29_999), []);
  const atBudget = policy({ finishWithinMs: 30_000 });
  assert.equal(only(atBudget.onSample(at(3), 'converging', 30_000)).kind, 'abort');
});

test('budget: overrides the one-decision-per-pass rule and the converging verdict', () => {
  const p = policy({ finishWithinMs: 30_000 });
  assert.equal(downtimeOf(only(p.onSample(at(4, {}, { 'expected-downtime': 10 }), 'stalled', 29_000))), 40);
  // same pass, budget now spent
  assert.equal(only(p.onSample(at(4), 'converging', 30_500)).kind, 'abort');
});

test('budget: spent while throttling still aborts', () => {
  const p = policy({ maxDowntimeMs: 20, finishWithinMs: 20_000 });
  assert.equal(only(p.onSample(at(2), 'stalled', 2000)).kind, 'set-parameters');
  assert.equal(p.throttling, true);
  assert.deepEqual(p.onSample(at(3), 'stalled', 3000), []);
  assert.equal(only(p.onSample(at(9), 'stalled', 20_000)).kind, 'abort');
});

// ---------------------------------------------------------------- defaultFinishWithinMs

test('defaultFinishWithinMs: a minute plus 30 s per GiB', () => {
  assert.equal(defaultFinishWithinMs(0), 60_000);
  assert.equal(defaultFinishWithinMs(128), 63_750);
  assert.equal(defaultFinishWithinMs(512), 75_000);
  assert.equal(defaultFinishWithinMs(1024), 90_000);
  assert.equal(defaultFinishWithinMs(1536), 105_000);
  assert.equal(defaultFinishWithinMs(4096), 180_000);
  assert.equal(defaultFinishWithinMs(16384), 540_000);
  assert.equal(defaultFinishWithinMs(100), 62_930); // 62 929.6875 rounded
  assert.ok(Number.isInteger(defaultFinishWithinMs(333)));
});

test('defaultFinishWithinMs: grows with memory', () => {
  let prev = -1;
  for (const m of [64, 128, 256, 1024, 2048, 8192, 65536]) {
    const v = defaultFinishWithinMs(m);
    assert.ok(v > prev);
    prev = v;
  }
});
