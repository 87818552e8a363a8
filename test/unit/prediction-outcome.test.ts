import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describeOutcome, predictionOutcome, stepReached } from '../../src/migration/prediction-outcome.js';
import type { MigrationRecord, Prediction } from '../../src/migration/schemas.js';

const p = {
  totalMs: 1300,
  downtimeMs: 80,
  step: 'pre-copy',
  summary: 'converges by plain pre-copy: ~1.3 s in 3 pass(es), downtime ~80 ms (max 300 ms)',
} as Prediction;

function rec(over: Partial<MigrationRecord>): MigrationRecord {
  return {
    state: 'completed',
    totalMs: 1200,
    downtimeMs: 25,
    throttlePct: 0,
    error: null,
    events: [{ at: '2026-01-01T00:00:00Z', message: 'copying memory to host-b (TLS)' }],
    ...over,
  } as MigrationRecord;
}

test('a completed move against its prediction: total error in percent, downtime in ms, the step', () => {
  assert.deepEqual(predictionOutcome(p, rec({})), { step: 'pre-copy', totalErrPct: 8, downtimeErrMs: 55 });
  assert.equal(
    describeOutcome(p, rec({})),
    'took 1.2 s, predicted ~1.3 s (+8 %), downtime 25 ms, predicted ~80 ms, pre-copy as predicted',
  );
  assert.equal(
    describeOutcome(p, rec({ totalMs: 1625, downtimeMs: 80 })),
    'took 1.6 s, predicted ~1.3 s (−20 %), downtime 80 ms, predicted ~80 ms, pre-copy as predicted',
  );
});

test('the step a move reached is read from its record', () => {
  assert.equal(stepReached(rec({ throttlePct: 30 })), 'auto-converge');
  const raised = rec({
    events: [{ at: '2026-01-01T00:00:01Z', message: 'stalled: downtime limit raised to 120 ms' }],
  });
  assert.equal(stepReached(raised), 'raise-downtime');
  assert.equal(
    describeOutcome(p, raised),
    'took 1.2 s, predicted ~1.3 s (+8 %), downtime 25 ms, predicted ~80 ms, ' +
      'reached raise-downtime where pre-copy was predicted',
  );
  const post = rec({
    postcopy: { switchedAt: '', afterMs: 1, downtimeMs: 40, guestPauseMs: 60, bytes: 1, durationMs: 1, lost: false },
  });
  assert.equal(stepReached(post), 'post-copy');
  const given = rec({
    state: 'failed',
    totalMs: null,
    downtimeMs: null,
    error: { code: 'E_NOT_CONVERGING', message: '' },
  });
  assert.equal(stepReached(given), 'abort');
  assert.equal(describeOutcome(p, given), 'reached abort where pre-copy was predicted');
});

test('nothing to set against while the move runs, or when it failed for another reason', () => {
  assert.equal(describeOutcome(p, rec({ state: 'copying-memory', totalMs: null, downtimeMs: null })), null);
  assert.equal(describeOutcome(p, rec({ state: 'failed', error: { code: 'E_QEMU', message: '' } })), null);
});
