// Placement and the cluster queue's scheduling decision (pure logic).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { place, whyNot, type PlacementNode } from '../../src/cluster/placement.js';
import { positions, schedule } from '../../src/cluster/schedule.js';
import type { QueueItem } from '../../src/cluster/model.js';

const nodes = (...n: Array<[string, number, Partial<PlacementNode>?]>): PlacementNode[] =>
  n.map(([name, freeMiB, o]) => ({ name, up: true, paused: false, freeMiB, ...o }));
const vm = (name: string, memoryMiB: number, o: Record<string, unknown> = {}) => ({
  name,
  memoryMiB,
  priority: 'normal' as const,
  preferredOwners: [],
  antiAffinity: [],
  ...o,
});

test('placement: memory fits, counting what the plan already put on a node', () => {
  const p = place(nodes(['a', 1000], ['b', 600]), [], [vm('v1', 500), vm('v2', 500), vm('v3', 501)]);
  assert.deepEqual(
    p.map((x) => x.to),
    ['a', 'b', null],
  );
  assert.match(p[2]!.reason!, /needs 501 MiB .* most free on an eligible node is 500 MiB/);
});

test('placement: high priority first, preferred owners in order, down/paused/excluded nodes never', () => {
  const p = place(
    nodes(['a', 10_000], ['b', 10_000, { paused: true }], ['c', 500], ['d', 10_000, { up: false }]),
    [],
    [
      vm('low', 100, { priority: 'low' }),
      vm('hi', 100, { priority: 'high', preferredOwners: ['b', 'c'] }),
      vm('x', 100, { exclude: ['a'] }),
    ],
  );
  assert.deepEqual(
    p.map((x) => [x.vm, x.to]),
    [
      ['hi', 'c'],
      ['x', 'c'],
      ['low', 'a'],
    ],
  );
  const none = place(nodes(['a', 1000]), [], [vm('v', 1, { exclude: ['a'] })]);
  assert.equal(none[0]!.to, null);
  assert.match(none[0]!.reason!, /no other node is up and not paused/);
});

test('placement: anti-affinity keeps a class apart, and warns when it cannot', () => {
  const p = place(
    nodes(['a', 10_000], ['b', 5000]),
    [{ vm: 'db1', node: 'a', antiAffinity: ['db'] }],
    [vm('db2', 100, { antiAffinity: ['db'] }), vm('db3', 100, { antiAffinity: ['db'] })],
  );
  assert.equal(p[0]!.to, 'b'); // a holds db1 although it has more memory
  assert.equal(p[1]!.to, 'a'); // both hold a db: it still goes, with a warning
  assert.match(p[1]!.warnings[0]!, /anti-affinity \(db\) cannot be kept/);
});

const item = (id: string, from: string, to: string, o: Partial<QueueItem> = {}): QueueItem => ({
  id,
  vm: `vm-${id}`,
  from,
  to,
  priority: 'normal',
  seq: Number(id.replace(/\D/g, '')) || 0,
  state: 'queued',
  ...o,
});
const limits = { maxOutgoing: 2, maxIncoming: 2, maxTotal: 8 };

test('schedule: limits per source, per destination and per cluster', () => {
  const q = [item('1', 'c', 'a'), item('2', 'c', 'b'), item('3', 'c', 'a'), item('4', 'c', 'b')];
  assert.deepEqual(schedule(q, limits), ['1', '2']);
  assert.deepEqual(
    schedule(
      q.map((i) => (i.id === '1' ? { ...i, state: 'admitted' as const } : i)),
      limits,
    ),
    ['2'],
  );
  assert.deepEqual(
    schedule([item('1', 'a', 'c'), item('2', 'b', 'c'), item('3', 'd', 'c')], { ...limits, maxIncoming: 1 }),
    ['1'],
  );
  assert.deepEqual(
    schedule([item('1', 'a', 'b'), item('2', 'c', 'd'), item('3', 'e', 'f')], { ...limits, maxTotal: 2 }),
    ['1', '2'],
  );
});

test('schedule: priority before arrival, and a blocked item does not block others', () => {
  const q = [item('1', 'a', 'b'), item('2', 'c', 'd', { priority: 'high' }), item('3', 'a', 'x', { priority: 'low' })];
  assert.deepEqual(
    [...positions(q)],
    [
      ['2', 1],
      ['1', 2],
      ['3', 3],
    ],
  );
  const busyA = [
    item('0', 'a', 'z', { state: 'admitted' }),
    item('9', 'a', 'y', { state: 'admitted' }),
    item('1', 'a', 'b', { priority: 'high' }),
    item('2', 'c', 'd', { priority: 'low' }),
  ];
  assert.deepEqual(schedule(busyA, limits), ['2']);
});

test('coalesced: calls during a run ask for one more run, not one each', async () => {
  const { coalesced } = await import('../../src/util/coalesce.js');
  let runs = 0;
  let release: () => void = () => undefined;
  const f = coalesced(async () => {
    runs++;
    if (runs === 1)
      await new Promise<void>((r) => {
        release = r;
      });
  });
  const a = f();
  const b = f();
  const c = f();
  release();
  await Promise.all([a, b, c]);
  assert.equal(runs, 2);
  await f();
  assert.equal(runs, 3);
});

test("a fail-over with nowhere to go says why, node by node (a node 'up' in cluster status may not answer)", () => {
  const members = Object.fromEntries(['a', 'b', 'c', 'd', 'e', 'f'].map((n) => [n, {}]));
  const up = Object.fromEntries(['b', 'c', 'd', 'e', 'f'].map((n) => [n, {}]));
  const why = whyNot(
    { members, up, paused: new Set(['e']) },
    new Set(['b']),
    ['c'],
    nodes(['d', 0, { up: false, unreachable: 'connect ECONNREFUSED 127.0.0.1:4100' }], ['e', 0], ['f', 512]),
    'a',
  );
  assert.equal(
    why,
    'b: its beat stood still; c: may not hold HA VMs; d: its agent did not answer: connect ECONNREFUSED ' +
      '127.0.0.1:4100; e: paused; f: up',
  );
});
