// The checkpoint tree (src/checkpoint/model.ts): names, lookups, what depends on what, removal.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CheckpointTree,
  assertNewName,
  branchName,
  dependents,
  emptyTree,
  findCheckpoint,
  imageOf,
  lineage,
  treeOrder,
  withoutCheckpoint,
  type CheckpointRecord,
} from '../../src/checkpoint/model.js';
import { FerryError } from '../../src/errors.js';

const ck = (id: string, parent: string | null, created: string, file: string | null): CheckpointRecord => ({
  id,
  name: `n-${id}`,
  parent,
  created,
  disks: { disk0: file },
  memory: id === 'b' ? `${id}.mem` : null,
  running: id === 'b',
  pauseMs: null,
  tookMs: 1,
});

/** a (base disk) ← b ← c, a ← d (a branch); the present state is built on d. */
function sample(): CheckpointTree {
  return {
    ...emptyTree('vm-1'),
    base: { disk0: { path: '/pool/vm/disk0.raw', format: 'raw' } },
    current: 'd',
    checkpoints: [
      ck('a', null, '2026-01-01T00:00:00Z', null),
      ck('b', 'a', '2026-01-01T00:01:00Z', 'disk0-b.qcow2'),
      ck('c', 'b', '2026-01-01T00:02:00Z', 'disk0-c.qcow2'),
      ck('d', 'a', '2026-01-01T00:03:00Z', 'disk0-d.qcow2'),
    ],
  };
}

const code = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof FerryError);
    return `${err.code}: ${err.message}`;
  }
  return 'no error';
};

test('names: invalid and existing ones are refused with what to do; free ones pass', () => {
  const t = sample();
  assert.match(
    code(() => assertNewName(t, 'vm', 'n-b')),
    /^E_CHECKPOINT_EXISTS: Cannot create checkpoint 'n-b'.*; choose/,
  );
  assert.match(
    code(() => assertNewName(t, 'vm', 'bad name')),
    /^E_INVALID_INPUT: Cannot use 'bad name'.*; choose/,
  );
  assert.match(
    code(() => assertNewName(t, 'vm', '-x')),
    /^E_INVALID_INPUT/,
  );
  assert.match(
    code(() => assertNewName(t, 'vm', 'x'.repeat(64))),
    /^E_INVALID_INPUT/,
  );
  assert.equal(
    code(() => assertNewName(t, 'vm', 'c2.after-boot_1')),
    'no error',
  );
});

test('lookups by name or id; an unknown name lists the ones there are', () => {
  const t = sample();
  assert.equal(findCheckpoint(t, 'vm', 'n-c', 'apply').id, 'c');
  assert.equal(findCheckpoint(t, 'vm', 'd', 'apply').name, 'n-d');
  assert.match(
    code(() => findCheckpoint(t, 'vm', 'zz', 'apply')),
    /^E_CHECKPOINT_NOT_FOUND: Cannot apply checkpoint 'zz' of VM 'vm': .*\(it has n-a, n-b, n-c, n-d\); 'ferry checkpoint list vm'/,
  );
  assert.match(
    code(() => findCheckpoint(emptyTree('x'), 'vm', 'zz', 'remove')),
    /\(it has none\)/,
  );
});

test('the tree: depth-first order, parents, the present state and what is built on each checkpoint', () => {
  const t = sample();
  assert.deepEqual(
    treeOrder(t).map((n) => `${'.'.repeat(n.depth)}${n.id}${n.current ? '*' : ''}`),
    ['a', '.b', '..c', '.d*'],
  );
  assert.deepEqual(
    lineage(t, 'c').map((c) => c.id),
    ['c', 'b', 'a'],
  );
  assert.deepEqual(lineage(t, null), []);
  assert.deepEqual(
    dependents(t, 'a').map((c) => (c === 'active' ? c : c.id)),
    ['b', 'd'],
  );
  assert.deepEqual(
    dependents(t, 'd').map((c) => (c === 'active' ? c : c.id)),
    ['active'],
  );
  assert.deepEqual(dependents(t, 'c'), []);
});

test('images: the base disk for the first checkpoint, folder files (qcow2) for the others', () => {
  const t = sample();
  assert.deepEqual(imageOf(t, '/ck', 'a', 'disk0'), { path: '/pool/vm/disk0.raw', format: 'raw' });
  assert.deepEqual(imageOf(t, '/ck', null, 'disk0'), { path: '/pool/vm/disk0.raw', format: 'raw' });
  assert.deepEqual(imageOf(t, '/ck', 'c', 'disk0'), { path: '/ck/disk0-c.qcow2', format: 'qcow2' });
});

test('removal re-parents the children and moves the present state to the parent', () => {
  const t = withoutCheckpoint(withoutCheckpoint(sample(), 'b'), 'd');
  assert.deepEqual(
    t.checkpoints.map((c) => `${c.id}<${c.parent}`),
    ['a<null', 'c<a'],
  );
  assert.equal(t.current, 'a');
});

test('branch names are free and valid; the schema refuses paths outside the folder', () => {
  const t = sample();
  const n = branchName(t, new Date('2026-12-01T20:00:00.123Z'));
  assert.equal(n, 'before-apply-20261201-200000');
  t.checkpoints.push({ ...ck('e', 'a', '2026-01-02T00:00:00Z', null), name: n });
  assert.equal(branchName(t, new Date('2026-12-01T20:00:00.999Z')), `${n}-2`);
  assert.equal(
    code(() => assertNewName(t, 'vm', `${n}-2`)),
    'no error',
  );
  assert.equal(CheckpointTree.safeParse(sample()).success, true);
  const bad = sample();
  bad.checkpoints[1]!.disks.disk0 = '../elsewhere.qcow2';
  assert.equal(CheckpointTree.safeParse(bad).success, false);
  bad.checkpoints[1]!.disks.disk0 = '/abs.qcow2';
  assert.equal(CheckpointTree.safeParse(bad).success, false);
});
