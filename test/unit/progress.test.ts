import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  sampleFrom,
  newProgress,
  update,
  judge,
  copyEta,
  type Sample,
  type PassEnd,
  type ProgressState,
} from '../../src/migration/progress.js';
import type { MigrationInfo, MigrationRamStats } from '../../src/qemu/commands.js';

const MiB = 1024 * 1024;
/** `ram.total` QEMU 7.2 reports for a `-m 128M` pc-i440fx-7.2 guest (RAM + ROM/BIOS blocks). */
const TOTAL = 134750208;

/** A complete QEMU 7.2 `ram` block; counters derived from `transferred` unless given. */
function ram(over: Partial<MigrationRamStats> = {}): MigrationRamStats {
  const pageSize = over['page-size'] ?? 4096;
  const transferred = over.transferred ?? 27002302;
  const normal = Math.floor(transferred / pageSize);
  return {
    transferred,
    remaining: 106889216,
    total: TOTAL,
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

/** A `query-migrate` reply from the source while the copy is active. */
function active(r: Partial<MigrationRamStats> = {}, extra: Partial<MigrationInfo> = {}): MigrationInfo {
  return { status: 'active', 'setup-time': 12, 'total-time': 807, 'expected-downtime': 50, ram: ram(r), ...extra };
}

/** The sample from the brief / QEMU-NOTES §A. */
const FIRST = active();

function sample(r: Partial<MigrationRamStats> = {}, atMs = 1000, extra: Partial<MigrationInfo> = {}): Sample {
  const s = sampleFrom(active(r, extra), atMs);
  assert.ok(s, 'sample expected');
  return s;
}

function fold(samples: Sample[], span?: [number, number]): ProgressState[] {
  const out: ProgressState[] = [];
  let st = newProgress();
  for (const s of samples) {
    st = span ? update(st, s, span) : update(st, s);
    out.push(st);
  }
  return out;
}

function pe(pass: number, remainingBytes: number, dirtyBps = 0, bandwidthBps = 30e6): PassEnd {
  return { pass, remainingBytes, dirtyBps, bandwidthBps };
}

// ---------------------------------------------------------------- sampleFrom

test('sampleFrom: the QEMU 7.2 example sample converts mbps (megabits) to bytes/s and keeps the raw counters', () => {
  const s = sampleFrom(FIRST, 1_700_000_000_123);
  assert.deepEqual(s, {
    atMs: 1_700_000_000_123,
    pass: 1,
    totalBytes: 134750208,
    remainingBytes: 106889216,
    transferredBytes: 27002302,
    bandwidthBps: 30_000_000, // 240 Mbit/s = 30 MB/s
    dirtyBps: 0,
    expectedDowntimeMs: 50,
    throttlePct: 0,
  });
});

test('sampleFrom: dirty rate is dirty-pages-rate × page-size', () => {
  const s = sample({ 'dirty-pages-rate': 2500, 'dirty-sync-count': 3 });
  assert.equal(s.dirtyBps, 2500 * 4096);
  assert.equal(s.dirtyBps, 10_240_000);
  assert.equal(s.pass, 3);
});

test('sampleFrom: honours a non-4 KiB page size (64 KiB pages)', () => {
  const s = sample({ 'page-size': 65536, 'dirty-pages-rate': 100 });
  assert.equal(s.dirtyBps, 6_553_600);
});

test('sampleFrom: a zero page-size falls back to 4096', () => {
  const s = sample({ 'page-size': 0, 'dirty-pages-rate': 10 });
  assert.equal(s.dirtyBps, 40960);
});

test('sampleFrom: fractional mbps and a large link', () => {
  assert.equal(sample({ mbps: 1000.5 }).bandwidthBps, 125_062_500);
  assert.equal(sample({ mbps: 8.192 }).bandwidthBps, 1_024_000);
  assert.equal(sample({ mbps: 0 }).bandwidthBps, 0);
});

test('sampleFrom: cpu-throttle-percentage is carried, absent means 0', () => {
  assert.equal(sample({}, 1, { 'cpu-throttle-percentage': 40 }).throttlePct, 40);
  assert.equal(sample().throttlePct, 0);
});

test('sampleFrom: no expected-downtime (e.g. completed reply with `downtime`) gives null', () => {
  const completed: MigrationInfo = {
    status: 'completed',
    'setup-time': 12,
    'total-time': 5210,
    downtime: 37,
    ram: ram({ remaining: 0, transferred: 139812864, 'dirty-sync-count': 4 }),
  };
  const s = sampleFrom(completed, 5);
  assert.ok(s);
  assert.equal(s.expectedDowntimeMs, null);
  assert.equal(s.remainingBytes, 0);
  assert.equal(s.pass, 4);
});

test('sampleFrom: replies without `ram` (setup, destination side, none) give null', () => {
  assert.equal(sampleFrom({ status: 'setup' }, 1), null);
  assert.equal(sampleFrom({ status: 'active', 'socket-address': [{ type: 'unix', path: '/run/mig.sock' }] }, 1), null);
  assert.equal(sampleFrom({}, 1), null);
});

// ---------------------------------------------------------------- progress

test('newProgress: starts empty', () => {
  assert.deepEqual(newProgress(), { progress: 0, etaSeconds: null, verdict: null, passes: [], last: null });
});

test('update: first sample gives transferred/(transferred+remaining), converging verdict and an ETA', () => {
  const s = sampleFrom(FIRST, 1000)!;
  const st = update(newProgress(), s);
  assert.ok(Math.abs(st.progress - 27002302 / (27002302 + 106889216)) < 1e-12);
  assert.ok(st.progress > 0.2 && st.progress < 0.21);
  assert.equal(st.verdict, 'converging');
  assert.equal(st.etaSeconds, 3.6); // 106889216 B / 30 MB/s = 3.56 s
  assert.deepEqual(st.passes, []);
  assert.equal(st.last, s);
});

test('update: does not mutate the previous state', () => {
  const a = update(newProgress(), sample({ transferred: 120_000_000, remaining: 1 * MiB, 'dirty-sync-count': 1 }));
  const passesBefore = a.passes;
  const snapshot = structuredClone(a);
  const b = update(a, sample({ transferred: 125_000_000, remaining: 20 * MiB, 'dirty-sync-count': 2 }));
  assert.deepEqual(a, snapshot);
  assert.equal(a.passes, passesBefore);
  assert.equal(a.passes.length, 0);
  assert.equal(b.passes.length, 1);
});

test('update: progress never goes backwards when `remaining` jumps up at a new pass', () => {
  // Pass 1 nearly done, then the dirty sync of pass 2 puts 20 MiB back into `remaining`.
  const seq = [
    sample({ transferred: 27002302, remaining: 106889216, 'dirty-sync-count': 1 }, 250),
    sample({ transferred: 90_000_000, remaining: 44_000_000, 'dirty-sync-count': 1, 'dirty-pages-rate': 900 }, 500),
    sample({ transferred: 133_000_000, remaining: 1_200_000, 'dirty-sync-count': 1, 'dirty-pages-rate': 900 }, 750),
    sample({ transferred: 134_000_000, remaining: 20 * MiB, 'dirty-sync-count': 2, 'dirty-pages-rate': 900 }, 1000),
    sample({ transferred: 140_000_000, remaining: 15 * MiB, 'dirty-sync-count': 2, 'dirty-pages-rate': 900 }, 1250),
    sample({ transferred: 150_000_000, remaining: 10 * MiB, 'dirty-sync-count': 3, 'dirty-pages-rate': 900 }, 1500),
  ];
  const states = fold(seq);
  const raw3 = 134_000_000 / (134_000_000 + 20 * MiB);
  const raw2 = 133_000_000 / (133_000_000 + 1_200_000);
  assert.ok(raw3 < raw2, 'the raw ratio really does drop at the pass boundary');
  assert.equal(states[3]!.progress, states[2]!.progress);
  for (let i = 1; i < states.length; i++) {
    assert.ok(states[i]!.progress >= states[i - 1]!.progress, `sample ${i} went backwards`);
  }
});

test('update: progress maps into the span', () => {
  const s = sampleFrom(FIRST, 1000)!;
  const raw = 27002302 / (27002302 + 106889216);
  const st = update(newProgress(), s, [0.05, 0.97]);
  assert.ok(Math.abs(st.progress - (0.05 + 0.92 * raw)) < 1e-12);
  // nothing transferred yet: the start of the span
  const zero = update(newProgress(), sample({ transferred: 0, remaining: TOTAL, mbps: 0 }), [0.05, 0.97]);
  assert.equal(zero.progress, 0.05);
  // all transferred: the end of the span
  const done = update(newProgress(), sample({ transferred: 139_000_000, remaining: 0 }), [0.05, 0.97]);
  assert.ok(Math.abs(done.progress - 0.97) < 1e-12);
});

test('update: progress is capped at 0.99 even at the end of a [0,1] span', () => {
  const done = update(newProgress(), sample({ transferred: 139_000_000, remaining: 0, 'dirty-sync-count': 5 }));
  assert.equal(done.progress, 0.99);
  const states = fold([
    sample({ transferred: 27002302, remaining: 106889216 }),
    sample({ transferred: 134_700_000, remaining: 4096, 'dirty-sync-count': 1 }),
    sample({ transferred: 134_750_000, remaining: 0, 'dirty-sync-count': 2 }),
    sample({ transferred: 134_760_000, remaining: 0, 'dirty-sync-count': 2 }),
  ]);
  for (const st of states) assert.ok(st.progress <= 0.99);
  assert.equal(states.at(-1)!.progress, 0.99);
});

test('update: denominator 0 (nothing sent, nothing left) gives span start, not NaN', () => {
  const st = update(newProgress(), sample({ transferred: 0, remaining: 0, total: 0, mbps: 0 }), [0.1, 0.9]);
  assert.equal(st.progress, 0.1);
  assert.equal(st.etaSeconds, null);
});

// ---------------------------------------------------------------- ETA

test('ETA = remaining / (bandwidth − dirty), rounded to 0.1 s', () => {
  // 400 Mbit/s = 50 MB/s; 2000 pages/s × 4 KiB = 8.192 MB/s; net 41.808 MB/s
  const st = update(newProgress(), sample({ mbps: 400, 'dirty-pages-rate': 2000, remaining: 40_000_000 }));
  assert.equal(st.etaSeconds, 1); // 0.957 s
  const st2 = update(newProgress(), sample({ mbps: 400, 'dirty-pages-rate': 0, remaining: 40_000_000 }));
  assert.equal(st2.etaSeconds, 0.8);
  const st3 = update(newProgress(), sample({ mbps: 80, 'dirty-pages-rate': 1000, remaining: 100 * MiB }));
  // 10 MB/s − 4.096 MB/s = 5.904 MB/s; 104857600 / 5904000 = 17.76
  assert.equal(st3.etaSeconds, 17.8);
});

test('ETA is 0 when nothing remains', () => {
  const st = update(newProgress(), sample({ remaining: 0, transferred: 139_000_000, 'dirty-pages-rate': 10 }));
  assert.equal(st.etaSeconds, 0);
});

test('ETA is null when the dirty rate equals or exceeds the bandwidth', () => {
  // 8.192 Mbit/s = 1 024 000 B/s = 250 pages/s of 4 KiB exactly
  const eq = update(newProgress(), sample({ mbps: 8.192, 'dirty-pages-rate': 250 }));
  assert.equal(eq.etaSeconds, null);
  assert.equal(eq.verdict, 'not-converging');
  // 240 Mbit/s = 30 MB/s; 7325 pages/s = 30.0032 MB/s
  const over = update(newProgress(), sample({ mbps: 240, 'dirty-pages-rate': 7325 }));
  assert.equal(over.etaSeconds, null);
  assert.equal(over.verdict, 'not-converging');
  // just under: 7324 pages/s = 29.999 MB/s → a (huge) finite ETA
  const under = update(newProgress(), sample({ mbps: 240, 'dirty-pages-rate': 7324, remaining: 1000 }));
  assert.equal(under.verdict, 'converging');
  assert.equal(under.etaSeconds, 1.1); // 1000 / 896 B/s
});

test('ETA is null when QEMU has not measured a bandwidth yet (mbps 0)', () => {
  const st = update(newProgress(), sample({ mbps: 0, transferred: 0, remaining: TOTAL }));
  assert.equal(st.etaSeconds, null);
  assert.equal(st.verdict, 'converging');
});

// ---------------------------------------------------------------- verdict at pass boundaries

/** Samples of a copy whose pass `n` (n ≥ 2) starts with remaining[n-2] bytes. */
function passes(remaining: number[], opts: { dirtyPages?: number; mbps?: number } = {}): Sample[] {
  const dirty = opts.dirtyPages ?? 1200;
  const mbps = opts.mbps ?? 240;
  const out: Sample[] = [
    sample({ transferred: 27002302, remaining: 106889216, 'dirty-sync-count': 1, 'dirty-pages-rate': 0, mbps }, 250),
  ];
  let sent = 134_000_000;
  let t = 500;
  remaining.forEach((rem, i) => {
    const pass = i + 2;
    out.push(
      sample({ transferred: sent, remaining: rem, 'dirty-sync-count': pass, 'dirty-pages-rate': dirty, mbps }, t),
    );
    // later in the same pass: remaining drains
    out.push(
      sample(
        {
          transferred: sent + Math.floor(rem / 2),
          remaining: Math.floor(rem / 2),
          'dirty-sync-count': pass,
          'dirty-pages-rate': dirty,
          mbps,
        },
        t + 250,
      ),
    );
    sent += rem;
    t += 500;
  });
  return out;
}

test('verdict: a new dirty-sync-count records what the previous pass left behind', () => {
  const states = fold(passes([20 * MiB, 10 * MiB]));
  const last = states.at(-1)!;
  assert.deepEqual(last.passes, [
    { pass: 1, remainingBytes: 20 * MiB, dirtyBps: 1200 * 4096, bandwidthBps: 30e6 },
    { pass: 2, remainingBytes: 10 * MiB, dirtyBps: 1200 * 4096, bandwidthBps: 30e6 },
  ]);
  // samples within a pass add nothing
  assert.equal(states[1]!.passes.length, 1);
  assert.equal(states[2]!.passes.length, 1);
});

test('verdict: converging when remaining shrinks by more than 10% between pass ends', () => {
  const states = fold(passes([20 * MiB, 10 * MiB, 5 * MiB]));
  assert.equal(states.at(-1)!.verdict, 'converging');
  for (const st of states) assert.equal(st.verdict, 'converging');
});

test('verdict: stalled when remaining stays within ±10% between pass ends', () => {
  const states = fold(passes([20 * MiB, 19 * MiB]));
  // pass 2 started (first pass end): nothing to compare against yet
  assert.equal(states[1]!.verdict, 'converging');
  // pass 3 started: 19 MiB vs 20 MiB → stalled, and it stays so for the whole pass
  assert.equal(states[3]!.verdict, 'stalled');
  assert.equal(states[4]!.verdict, 'stalled');
  const up = fold(passes([20 * MiB, 21 * MiB]));
  assert.equal(up.at(-1)!.verdict, 'stalled');
});

test('verdict: not-converging when remaining grows by more than 10% between pass ends, and no ETA', () => {
  const states = fold(passes([20 * MiB, 24 * MiB]));
  assert.equal(states.at(-1)!.verdict, 'not-converging');
  assert.equal(states.at(-1)!.etaSeconds, null);
});

test('verdict: not-converging when dirty ≥ bandwidth at a pass end even if remaining shrank', () => {
  // 240 Mbit/s = 30 MB/s vs 8000 pages/s = 32.8 MB/s
  const states = fold(passes([40 * MiB, 30 * MiB], { dirtyPages: 8000 }));
  assert.equal(states.at(-1)!.verdict, 'not-converging');
  assert.equal(states.at(-1)!.etaSeconds, null);
});

test('verdict: only changes at pass boundaries, not within a pass', () => {
  const seq = passes([20 * MiB, 19 * MiB]);
  // more samples inside pass 3 with remaining dropping fast: still stalled
  seq.push(sample({ transferred: 190_000_000, remaining: 1 * MiB, 'dirty-sync-count': 3, 'dirty-pages-rate': 1200 }));
  seq.push(sample({ transferred: 191_000_000, remaining: 4096, 'dirty-sync-count': 3, 'dirty-pages-rate': 1200 }));
  const states = fold(seq);
  assert.equal(states.at(-1)!.verdict, 'stalled');
  assert.equal(states.at(-1)!.passes.length, 2);
  // ...and the ETA still follows the current sample
  assert.equal(states.at(-1)!.etaSeconds, Math.round((4096 / (30e6 - 1200 * 4096)) * 10) / 10);
});

test(
  'verdict: at a pass end a dirty rate of 0 is a real reading; an unmeasured bandwidth keeps the ' + 'previous one',
  () => {
    let st = update(newProgress(), sample({ 'dirty-sync-count': 1, 'dirty-pages-rate': 1500, mbps: 240 }));
    st = update(
      st,
      sample({ 'dirty-sync-count': 2, 'dirty-pages-rate': 0, mbps: 0, remaining: 8 * MiB, transferred: 134_000_000 }),
    );
    assert.deepEqual(st.passes, [{ pass: 1, remainingBytes: 8 * MiB, dirtyBps: 0, bandwidthBps: 30e6 }]);
  },
);

test('verdict: before any pass end, dirty ≥ bandwidth already gives not-converging', () => {
  const st = update(newProgress(), sample({ 'dirty-sync-count': 1, 'dirty-pages-rate': 9000, mbps: 240 }));
  assert.equal(st.verdict, 'not-converging');
  assert.deepEqual(st.passes, []);
});

// ---------------------------------------------------------------- judge()

test('judge: no pass ends → null', () => {
  assert.equal(judge([]), null);
});

test('judge: a single pass end is converging unless dirty ≥ bandwidth', () => {
  assert.equal(judge([pe(1, 20 * MiB, 5e6, 30e6)]), 'converging');
  assert.equal(judge([pe(1, 20 * MiB, 30e6, 30e6)]), 'not-converging');
  assert.equal(judge([pe(1, 20 * MiB, 31e6, 30e6)]), 'not-converging');
});

test('judge: bandwidth 0 (not measured) does not count as dirty ≥ bandwidth', () => {
  assert.equal(judge([pe(1, 20 * MiB, 5e6, 0)]), 'converging');
});

test('judge: the ±10% thresholds', () => {
  const prev = pe(1, 10_000_000);
  assert.equal(judge([prev, pe(2, 8_999_999)]), 'converging');
  assert.equal(judge([prev, pe(2, 9_000_000)]), 'stalled'); // exactly −10%
  assert.equal(judge([prev, pe(2, 10_000_000)]), 'stalled');
  assert.equal(judge([prev, pe(2, 11_000_000)]), 'stalled'); // exactly +10%
  assert.equal(judge([prev, pe(2, 11_000_001)]), 'not-converging');
  assert.equal(judge([prev, pe(2, 0)]), 'converging');
});

test('judge: dirty ≥ bandwidth wins over a shrinking remaining', () => {
  assert.equal(judge([pe(1, 40 * MiB), pe(2, 10 * MiB, 35e6, 30e6)]), 'not-converging');
});

test('judge: only the last two pass ends count', () => {
  // long history of convergence, then a stall
  assert.equal(judge([pe(1, 80 * MiB), pe(2, 40 * MiB), pe(3, 20 * MiB), pe(4, 20 * MiB)]), 'stalled');
  // a growth long ago does not matter
  assert.equal(judge([pe(1, 10 * MiB), pe(2, 40 * MiB), pe(3, 20 * MiB)]), 'converging');
  // the rates of older pass ends do not matter either
  assert.equal(judge([pe(1, 40 * MiB, 50e6, 30e6), pe(2, 20 * MiB, 1e6, 30e6)]), 'converging');
});

// ---------------------------------------------------------------- copyEta

test('copyEta: remaining / rate rounded to 0.1 s, null without a rate', () => {
  assert.equal(copyEta(100 * MiB, 10 * MiB), 10);
  assert.equal(copyEta(1_000_000, 3_000_000), 0.3);
  assert.equal(copyEta(0, 1), 0);
  assert.equal(copyEta(100, 0), null);
  assert.equal(copyEta(100, -5), null);
});
