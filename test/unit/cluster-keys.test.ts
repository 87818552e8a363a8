// The cluster's etcd keys and values (src/cluster/keys.ts): every key built and parsed back,
// every value encoded and decoded through its schema, and bad values reported with their key
// and the schema's complaint instead of being trusted. A map stands in for etcd (pure logic).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { z } from 'zod';
import * as K from '../../src/cluster/keys.js';
import { DEFAULT_LIMITS, type HaRecord } from '../../src/cluster/model.js';
import { readNodes } from '../../src/cluster/records.js';
import type { ClusterStore } from '../../src/cluster/store.js';
import { FerryError } from '../../src/errors.js';

/** Reads from a map; anything else is not part of these tests. */
function mapStore(kv: Record<string, string>): ClusterStore {
  const no = (): never => {
    throw new Error('not used');
  };
  return {
    prefix: '/test/',
    get: (k) => Promise.resolve(kv[k] ?? null),
    getPrefix: (p) => Promise.resolve(Object.fromEntries(Object.entries(kv).filter(([k]) => k.startsWith(p)))),
    put: no,
    delete: no,
    txn: no,
    grantLease: no,
    keepAliveOnce: no,
    watchPrefix: no,
    campaign: no,
    leader: no,
    close: () => Promise.resolve(),
  };
}

const collect = (): { bad: K.BadValue[]; onBad: K.OnBad } => {
  const bad: K.BadValue[] = [];
  return { bad, onBad: (b) => bad.push(b) };
};

const rec: HaRecord = {
  name: 'web1',
  id: '1f0c',
  configPath: '/shared/web1',
  owner: 'host-a',
  memoryMiB: 256,
  generation: 3,
  spec: {
    name: 'web1',
    cluster: { priority: 'high', preferredOwners: [], antiAffinity: [], failback: 'never' },
    disks: [{ id: 'd0' }],
  },
};

test('keys: each family builds <prefix><name> and reads the name back; names with a slash are refused', () => {
  const check = <S extends z.ZodType>(fam: K.Family<S>, key: string): void => {
    assert.equal(fam.key('host-a'), key);
    assert.equal(fam.nameOf(key), 'host-a');
    assert.equal(fam.nameOf(`${key}/x`), null, 'one segment only');
    assert.equal(fam.nameOf('config'), null);
  };
  check(K.members, 'members/host-a');
  check(K.nodes, 'nodes/host-a');
  check(K.paused, 'paused/host-a');
  check(K.vms, 'vms/host-a');
  check(K.batches, 'batches/host-a');
  check(K.admits, 'admit/host-a');
  assert.throws(
    () => K.vms.key('a/b'),
    (e: FerryError) => e.code === 'E_INVALID_INPUT' && /VM 'a\/b'/.test(e.message),
  );
  assert.throws(() => K.nodes.key(''), /node ''/);
  assert.throws(() => K.queue.key('host-a', '../x'), /migration/);
});

test('queue keys: queue/<source>/<id>, parsed back; other shapes are not queue keys', () => {
  const key = K.queue.key('host-b', '0e4f-11');
  assert.equal(key, 'queue/host-b/0e4f-11');
  assert.ok(key.startsWith(K.queue.of('host-b')));
  assert.deepEqual(K.queue.parse(key), { source: 'host-b', id: '0e4f-11' });
  for (const bad of ['queue/0e4f-11', 'queue/a/b/c', 'queue//x', 'admit/a/b', 'queue/a/.x'])
    assert.equal(K.queue.parse(bad), null, bad);
});

test('values: encode then decode gives the value back (HA record with its whole spec, batch, queue entry)', () => {
  const d = K.vms.decode('vms/web1', K.vms.encode(rec));
  assert.ok(d.ok);
  assert.deepEqual(d.value, rec, 'spec fields the leader does not know are kept');
  const batch = {
    node: 'host-c',
    kind: 'drain' as const,
    state: 'running' as const,
    startedAt: '2024-01-01T00:00:00.000Z',
    finishedAt: null,
    items: [
      {
        vm: 'w1',
        from: 'host-c',
        priority: 'high' as const,
        to: 'host-a',
        state: 'moving' as const,
        migrationId: 'm1',
        attempts: 1,
        reason: null,
      },
    ],
  };
  const b = K.batches.decode('batches/host-c', K.batches.encode(batch));
  assert.ok(b.ok);
  assert.deepEqual(b.value, batch);
  const entry = { id: 'm1', vm: 'w1', from: 'host-c', to: 'host-a', priority: 'low' as const, seq: 5, batch: 'x' };
  const q = K.queue.codec.decode('queue/host-c/m1', K.queue.codec.encode(entry));
  assert.ok(q.ok);
  assert.deepEqual(q.value, entry);
});

test('encode refuses a value that would not read back (a bug caught before the write)', () => {
  assert.throws(() => K.nodes.encode({ endpoint: 'not a url', since: 'now' }));
  assert.throws(() => K.vms.encode({ ...rec, generation: -1 }));
});

test('bad values: not JSON, wrong shape, wrong type: the key and the schema issue are reported', () => {
  const notJson = K.nodes.decode('nodes/a', '{oops');
  assert.ok(!notJson.ok);
  assert.equal(notJson.bad.key, 'nodes/a');
  assert.match(notJson.bad.issue, /not JSON/);
  const wrong = K.vms.decode('vms/x', JSON.stringify({ ...rec, owner: 42 }));
  assert.ok(!wrong.ok);
  assert.match(wrong.bad.issue, /^owner: /);
  const missing = K.vms.decode('vms/x', JSON.stringify({ ...rec, spec: {} }));
  assert.ok(!missing.ok);
  assert.match(missing.bad.issue, /spec\.name/);
  const prio = K.batches.decode('batches/a', JSON.stringify({ node: 'a', kind: 'drain', state: 'exploded' }));
  assert.ok(!prio.ok);
  assert.match(prio.bad.issue, /state/);
});

test('readOne: the value and its stored text; a bad value is E_CLUSTER_BAD_VALUE with key and issue', async () => {
  const text = K.vms.encode(rec);
  const store = mapStore({ 'vms/web1': text, 'vms/evil': '{"name":"evil","owner":"host-b"}' });
  const e = await K.readOne(store, K.vms, 'web1');
  assert.deepEqual(e, { name: 'web1', key: 'vms/web1', raw: text, value: rec });
  assert.equal(await K.readOne(store, K.vms, 'nope'), null);
  await assert.rejects(K.readOne(store, K.vms, 'evil'), (err: FerryError) => {
    assert.equal(err.code, 'E_CLUSTER_BAD_VALUE');
    assert.match(err.message, /^Cannot read VM 'evil': etcd key 'vms\/evil' holds a value that is not valid \(/);
    assert.equal((err.context as { key: string }).key, 'vms/evil');
    return true;
  });
});

test('readAll and readNodes: bad entries and stray keys are reported and left out, the rest is read', async () => {
  const { bad, onBad } = collect();
  const store = mapStore({
    'members/host-a': K.members.encode({ endpoint: 'https://127.0.0.1:1' }),
    'members/host-b': 'null',
    'nodes/host-a': K.nodes.encode({ endpoint: 'https://127.0.0.1:1', since: 'x' }),
    'nodes/host-a/extra': '{}',
    'paused/host-a': K.paused.encode({ reason: 'drain', at: 'x' }),
  });
  const nodes = await readNodes(store, onBad);
  assert.deepEqual(Object.keys(nodes.members), ['host-a']);
  assert.deepEqual(Object.keys(nodes.up), ['host-a']);
  assert.deepEqual([...nodes.paused], ['host-a']);
  assert.deepEqual(
    bad.map((b) => b.key),
    ['members/host-b', 'nodes/host-a/extra'],
  );
  assert.ok(bad.every((b) => b.issue.length > 0));
});

test('queue entries: an entry whose id or source differs from its key is reported, not admitted', async () => {
  const { bad, onBad } = collect();
  const ok = { id: 'm1', vm: 'w1', from: 'host-a', to: 'host-b', priority: 'normal' as const, seq: 1 };
  const store = mapStore({
    'queue/host-a/m1': K.queue.codec.encode(ok),
    // host-b writing under its own prefix a move that claims to leave host-a:
    'queue/host-b/m2': K.queue.codec.encode({ ...ok, id: 'm2' }),
    'queue/m3': K.queue.codec.encode({ ...ok, id: 'm3' }),
  });
  const entries = await K.readQueueEntries(store, onBad);
  assert.deepEqual(
    entries.map((e) => e.entry.id),
    ['m1'],
  );
  assert.deepEqual(
    bad.map((b) => b.key),
    ['queue/host-b/m2', 'queue/m3'],
  );
});

test('limits: defaults, set values, and defaults again for a bad value (reported)', async () => {
  const { bad, onBad } = collect();
  assert.deepEqual(K.parseLimits(null, onBad), DEFAULT_LIMITS);
  assert.deepEqual(K.parseLimits('{"maxOutgoing":1}', onBad), { ...DEFAULT_LIMITS, maxOutgoing: 1 });
  assert.deepEqual(await K.readLimits(mapStore({ config: '{"maxOutgoing":0}' }), onBad), DEFAULT_LIMITS);
  assert.deepEqual(
    bad.map((b) => b.key),
    ['config'],
  );
  assert.match(bad[0]?.issue ?? '', /maxOutgoing/);
});
