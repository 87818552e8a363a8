// Adaptive concurrency (issue #17.5): the levels a leader learns from the moves of drains and fail-backs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AdaptiveConcurrency, type MoveOutcome } from '../../src/cluster/adaptive.js';
import { schedule } from '../../src/cluster/schedule.js';
import type { QueueItem } from '../../src/cluster/model.js';

const MiB = 1024 * 1024;
const MAX = { outgoing: 4, incoming: 4 };

/** A link of `linkMiBps` shared by the moves running at once (each gets its share, up to `perMove`). */
function linkMove(level: number, linkMiBps: number, perMove = Infinity): MoveOutcome {
  const rate = Math.min(perMove, linkMiBps / level) * MiB;
  return {
    from: 'a',
    to: 'b',
    bytes: 256 * MiB,
    totalMs: ((256 * MiB) / rate) * 1000,
    completed: true,
    downtimeMs: 40,
    maxDowntimeMs: 300,
  };
}

function run(a: AdaptiveConcurrency, n: number, outcome: (level: number) => MoveOutcome): number[] {
  const levels: number[] = [];
  for (let i = 0; i < n; i++) {
    const level = a.limit('a', 'outgoing', MAX.outgoing);
    levels.push(level);
    a.observe(outcome(level), MAX);
  }
  return levels;
}

test('starts at 2 and climbs while each further move adds throughput (each move limited by its guest)', () => {
  const a = new AdaptiveConcurrency();
  assert.equal(a.limit('a', 'outgoing', 4), 2);
  assert.equal(a.limit('a', 'outgoing', 1), 1, 'never above the configured limit');
  const levels = run(a, 12, (l) => linkMove(l, 1000, 100));
  assert.equal(levels.at(-1), 4, `levels ${levels.join(' ')}`);
  assert.ok(levels.every((l) => l <= 4));
});

test('a saturated link: it settles where a further move adds nothing, and probes again now and then', () => {
  const a = new AdaptiveConcurrency();
  // Each move alone could do 100 MiB/s; the link carries 120: 2 at once is all it pays for.
  const levels = run(a, 30, (l) => linkMove(l, 120, 100));
  const tail = levels.slice(10);
  assert.ok(tail.filter((l) => l === 2).length >= tail.length * 0.6, `levels ${levels.join(' ')}`);
  assert.ok(Math.max(...levels) <= 3, 'no more than one step above the knee');
});

test('a link one move fills: it goes down to 1, and a link for 2½ moves settles at 3', () => {
  const one = run(new AdaptiveConcurrency(), 30, (l) => linkMove(l, 50, 100)).slice(10);
  assert.ok(one.filter((l) => l === 1).length >= one.length * 0.7, `levels ${one.join(' ')}`);
  const three = run(new AdaptiveConcurrency(), 30, (l) => linkMove(l, 250, 100)).slice(10);
  assert.ok(three.filter((l) => l === 3).length >= three.length * 0.7, `levels ${three.join(' ')}`);
});

test('a move over its downtime limit steps the level down; 1 is the floor', () => {
  const a = new AdaptiveConcurrency();
  const missed = { ...linkMove(2, 1000, 100), downtimeMs: 900 };
  const ch = a.observe(missed, MAX);
  assert.deepEqual(
    ch.map((c) => [c.node, c.direction, c.from, c.to]),
    [
      ['a', 'outgoing', 2, 1],
      ['b', 'incoming', 2, 1],
    ],
  );
  assert.match(ch[0]!.reason, /downtime/);
  assert.deepEqual(a.observe(missed, MAX), [], 'already at 1');
  assert.equal(a.limit('a', 'outgoing', 4), 1);
});

test('schedule holds each node to its learnt level, the others to the configured limits', () => {
  const items: QueueItem[] = Array.from({ length: 6 }, (_, i) => ({
    id: `m${i}`,
    vm: `vm${i}`,
    from: i < 4 ? 'a' : 'c',
    to: 'b',
    priority: 'normal',
    seq: i,
    state: 'queued',
  }));
  const limits = { maxOutgoing: 4, maxIncoming: 8, maxTotal: 16 };
  const per = {
    outgoing: (n: string, max: number) => (n === 'a' ? 1 : max),
    incoming: (_n: string, max: number) => max,
  };
  assert.deepEqual(schedule(items, limits, new Set(), per), ['m0', 'm4', 'm5']);
  assert.deepEqual(schedule(items, limits), ['m0', 'm1', 'm2', 'm3', 'm4', 'm5']);
});
