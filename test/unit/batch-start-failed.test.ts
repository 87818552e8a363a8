// What a drain's or fail-back's item becomes when its host refuses or fails the move's start
// (src/cluster/batches.ts startFailed): the retry rule, and a host still rejoining its cluster
// after an agent restart (its fence kept the node up), which is asked again without spending an
// attempt (a CI run failed a drain on three such refusals in a row).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../src/errors.js';
import { startFailed } from '../../src/cluster/batches.js';
import type { BatchItem } from '../../src/cluster/model.js';

const item = (attempts: number): BatchItem => ({
  vm: 'w1',
  from: 'host-c',
  priority: 'normal',
  to: 'host-a',
  state: 'moving',
  migrationId: 'm1',
  attempts,
  reason: null,
});

test('startFailed: a host rejoining its cluster costs no attempt, however often it refuses', () => {
  const it = item(1);
  for (let i = 0; i < 10; i++) {
    it.attempts++; // the runner counts each start before it asks
    startFailed(it, new FerryError('E_CLUSTER_JOINING', 'Cannot move VM: this host is still joining its cluster'));
  }
  assert.deepEqual([it.state, it.attempts, it.migrationId], ['pending', 1, null]);
  assert.match(it.reason ?? '', /waiting for host-c to rejoin the cluster/);
});

test('startFailed: a refusal is retried up to three attempts, then the item fails', () => {
  const it = item(0);
  const refused = new FerryError('E_FORBIDDEN', 'Cannot move VM: this host is in no cluster');
  for (const want of ['pending', 'pending', 'failed']) {
    it.attempts++;
    startFailed(it, refused);
    assert.equal(it.state, want);
  }
  assert.equal(it.attempts, 3);
});

test('startFailed: a VM no longer on its host counts as moved', () => {
  const it = item(1);
  startFailed(it, new FerryError('E_VM_NOT_FOUND', 'Cannot find VM'));
  assert.deepEqual([it.state, it.reason], ['moved', 'not on host-c any more']);
});
