// The leader's side of following a drain: each version of a batch it reads from etcd is
// published once as a `cluster.batch` event, and a new leader publishes every batch it finds.
// A fake store: only ended batches, so the runner reads and publishes without stepping them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { BatchView } from '../../src/api/schemas.js';
import type { EventFields, EventType } from '../../src/api/events.js';
import { BatchRunner } from '../../src/cluster/batches.js';
import * as K from '../../src/cluster/keys.js';
import type { ClusterStore, Leadership } from '../../src/cluster/store.js';

const batch = (node: string, state: BatchView['state']): BatchView => ({
  node,
  kind: 'drain',
  state,
  startedAt: '2026-01-01T10:00:00.000Z',
  finishedAt: '2026-01-01T10:01:00.000Z',
  items: [
    {
      vm: 'w1',
      from: node,
      priority: 'normal',
      to: 'host-a',
      state: state === 'completed' ? 'moved' : 'failed',
      migrationId: 'm1',
      attempts: 1,
      reason: null,
    },
  ],
});

function runner(kv: Record<string, string>): { run: BatchRunner; published: BatchView[] } {
  const store = { prefix: '', getPrefix: () => Promise.resolve({ ...kv }) } as unknown as ClusterStore;
  const leadership = { lost: false, key: 'leader', candidateId: 'c1' } as unknown as Leadership;
  const published: BatchView[] = [];
  const emit = <T extends EventType>(type: T, fields: EventFields<T>): void => {
    if (type === 'cluster.batch') published.push((fields as EventFields<'cluster.batch'>).batch);
  };
  const ctx = { store, self: 'host-a', tls: { ca: '', cert: '', key: '' }, onBad: () => undefined };
  return { run: new BatchRunner(ctx, leadership, emit), published };
}

test('each version of a batch is published once; a new leader publishes every batch it finds', async () => {
  const kv: Record<string, string> = {
    [K.batches.key('host-c')]: K.batches.encode(batch('host-c', 'failed')),
    [K.batches.key('host-b')]: K.batches.encode(batch('host-b', 'completed')),
  };
  const { run, published } = runner(kv);
  await run.pass();
  assert.deepEqual(published.map((b) => `${b.node}:${b.state}`).sort(), ['host-b:completed', 'host-c:failed']);
  await run.pass();
  assert.equal(published.length, 2, 'an unchanged batch is not published again');
  kv[K.batches.key('host-c')] = K.batches.encode(batch('host-c', 'completed'));
  await run.pass();
  assert.deepEqual(
    published.slice(2).map((b) => `${b.node}:${b.state}`),
    ['host-c:completed'],
  );
  const next = runner(kv);
  await next.run.pass();
  assert.equal(next.published.length, 2, 'a new leader publishes all');
});
