// The block layer's job-wait loop against a scripted QMP peer: a job that becomes ready right
// after QEMU answered `query-jobs` (both in one read) wakes the loop at once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QmpClient } from '../../src/qemu/qmp.js';
import { waitMirrorsReady } from '../../src/migration/block.js';
import { fakeQemu } from './fake-qmp.js';

const job = (status: string, done: number): Record<string, unknown> => ({
  id: 'copy-disk0',
  type: 'mirror',
  status,
  'current-progress': done,
  'total-progress': 100,
});

test('a job ready just after the answer to query-jobs wakes the wait at once', { timeout: 10_000 }, async (t) => {
  let asked = 0;
  const sock = await fakeQemu(t, (msg, send) => {
    if (msg.execute !== 'query-jobs') return;
    asked++;
    if (asked === 1) {
      // One write: the answer (still running), then the event, read by the client in one chunk.
      send({ return: [job('running', 40)], id: msg.id });
      send({ event: 'BLOCK_JOB_READY', data: { device: 'copy-disk0' }, timestamp: { seconds: 1, microseconds: 0 } });
    } else send({ return: [job('ready', 100)], id: msg.id });
  });
  const qmp = await QmpClient.connect(sock, { vm: 'fake' });
  t.after(() => qmp.close());
  const seen: boolean[] = [];
  // A wake interval far beyond the test's own timeout: only the event can end the wait in time.
  await waitMirrorsReady(
    qmp,
    [{ jobId: 'copy-disk0', diskId: 'disk0', device: 'disk0-root', target: 'disk0-m' }],
    (ps) => seen.push(ps.every((p) => p.ready)),
    { timeoutMs: 60_000, wakeMs: 600_000 },
  );
  assert.deepEqual(seen, [false, true]);
  assert.equal(asked, 2);
});
