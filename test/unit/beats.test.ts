// The leader's beat rule and the node's side of it (src/cluster/beats.ts): a node is stale only
// when a read sent a whole window after the leader first saw its last beat still shows that beat.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  BEAT_WINDOW_MS,
  BeatTracker,
  LEGACY_BEAT_WINDOW_MS,
  beatLossMs,
  beatOf,
  nextBeat,
  renewedAt,
  type Beat,
} from '../../src/cluster/beats.js';
import { fenceDue, type Liveness } from '../../src/cluster/fence.js';
import { FENCE_MARGIN_MS, fenceAfterMs } from '../../src/cluster/membership.js';

const beats = (o: Record<string, number | undefined>, windowMs = 4000): Map<string, Beat | undefined> =>
  new Map(Object.entries(o).map(([n, beat]) => [n, beat === undefined ? undefined : { beat, windowMs }]));

test('a beat that moves keeps a node fresh; one that stands still a whole window makes it stale', () => {
  const t = new BeatTracker();
  assert.deepEqual(t.observe(beats({ a: 1, b: 1 }), 0, 10), []);
  assert.deepEqual(t.observe(beats({ a: 2, b: 1 }), 2000, 2010), []);
  assert.deepEqual(t.observe(beats({ a: 3, b: 1 }), 4010, 4020), [], 'exactly the window: not yet');
  assert.deepEqual(t.observe(beats({ a: 4, b: 1 }), 4011, 4020), ['b']);
  assert.equal(t.silentMs('b', 5010), 5000);
  assert.deepEqual(t.observe(beats({ a: 5, b: 2 }), 6000, 6010), [], 'b beats again: fresh');
  assert.deepEqual(t.observe(beats({ a: 5, b: 2 }), 9000, 9010), [], 'counted from when b was seen again');
  assert.deepEqual(t.observe(beats({ a: 5, b: 2 }), 10_011, 10_020), ['a', 'b']);
});

test('counted from the answer that first showed the beat, judged by when the next read was sent', () => {
  const t = new BeatTracker();
  // A slow read: sent at 0, answered at 900. The beat may have been written just before 900.
  t.observe(beats({ a: 7 }), 0, 900);
  assert.deepEqual(t.observe(beats({ a: 7 }), 4800, 4900), [], 'sent 3.9 s after it was seen');
  assert.deepEqual(t.observe(beats({ a: 7 }), 4901, 6000), ['a']);
});

test('a node without beats is judged by its lease alone; one that left is forgotten', () => {
  const t = new BeatTracker();
  const b = (o: Record<string, number | undefined>): Map<string, Beat | undefined> => beats(o, BEAT_WINDOW_MS);
  assert.deepEqual(t.observe(b({ old: undefined, a: 50 }), 100_000, 100_001), []);
  assert.deepEqual(t.observe(b({ old: undefined, a: 50 }), 100_002 + BEAT_WINDOW_MS, 0), ['a']);
  assert.equal(t.silentMs('old', 0), null);
  // A node that left: forgotten, and counted afresh if it comes back.
  assert.deepEqual(t.observe(b({}), 200_000, 200_001), []);
  assert.deepEqual(t.observe(b({ a: 50 }), 200_002, 200_003), []);
});

test("each beat is counted by the window its writer declared; one without is the first version's 6 s", () => {
  assert.deepEqual(beatOf({ beat: 9, beatWindowMs: 3000 }), { beat: 9, windowMs: 3000 });
  assert.deepEqual(beatOf({ beat: 9 }), { beat: 9, windowMs: LEGACY_BEAT_WINDOW_MS });
  assert.equal(LEGACY_BEAT_WINDOW_MS, 6000);
  assert.equal(beatOf({}), undefined);
  // A rolling upgrade: `new` fences 1 s before its 3 s window, `old` before 6 s.
  const t = new BeatTracker();
  const read = (sentAt: number): string[] =>
    t.observe(
      new Map([
        ['new', beatOf({ beat: 1, beatWindowMs: 3000 })],
        ['old', beatOf({ beat: 1 })],
      ]),
      sentAt,
      sentAt + 10,
    );
  assert.deepEqual(read(0), []);
  assert.deepEqual(read(3011), ['new']);
  assert.deepEqual(read(6010), ['new'], 'the old node: exactly its window, not yet');
  assert.deepEqual(read(6011), ['new', 'old']);
  // The window is the one declared with the beat that stood still, not a later record's.
  const u = new BeatTracker();
  u.observe(new Map([['a', { beat: 5, windowMs: 6000 }]]), 0, 0);
  assert.deepEqual(u.observe(new Map([['a', { beat: 5, windowMs: 3000 }]]), 4000, 4000), []);
});

test('beats always grow, also across processes that start from the clock', () => {
  assert.equal(nextBeat(0, 1000), 1000);
  assert.equal(nextBeat(1000, 1000), 1001);
  assert.equal(nextBeat(5000, 1000), 5001, 'a clock set back');
});

test("the node fences itself before the leader can count its beat's window out", () => {
  const loss = beatLossMs(FENCE_MARGIN_MS);
  assert.equal(loss, BEAT_WINDOW_MS - FENCE_MARGIN_MS);
  // Lease TTLs of 2 to 60 s: the fence is due once either the keepalive or the beat is overdue.
  for (const ttl of [2, 4, 10, 60]) {
    const lossAfterMs = fenceAfterMs(ttl);
    const l = (at: number): Liveness => ({
      version: 1,
      node: 'a',
      cluster: 'c',
      endpoints: ['https://127.0.0.1:1'],
      tls: { ca: '', cert: '', key: '' },
      leaseId: '1',
      ttlMs: ttl * 1000,
      lossAfterMs,
      renewedAt: at,
      agentPid: 1,
      graceMs: 0,
    });
    // Keepalives fine, last beat taken at 0: due just after `loss`, whatever the lease.
    const beatOnly = renewedAt(1_000_000, 0, lossAfterMs, loss);
    assert.equal(fenceDue(l(beatOnly), loss, null), false, `ttl ${ttl}: not before the beat's loss`);
    assert.equal(fenceDue(l(beatOnly), loss + 1, null), true, `ttl ${ttl}: due after it`);
    // Beats fine, last keepalive at 0: due after the lease's own margin, as before beats.
    const leaseOnly = renewedAt(0, 1_000_000, lossAfterMs, loss);
    assert.equal(fenceDue(l(leaseOnly), lossAfterMs, null), false);
    assert.equal(fenceDue(l(leaseOnly), lossAfterMs + 1, null), true);
  }
});
