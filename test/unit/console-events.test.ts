// The event stream as the web console reads it: which lines are events, and which events
// make a page load again (the pages load nothing else while idle).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isMigrationEvent, parseEvent } from '../../src/api/events.js';
import type { MigrationRecord, MigrationState } from '../../src/migration/schemas.js';
import { changesCluster, changesHosts, changesVms, endsMigration, upsertRecord } from '../../web/src/liveRules.js';

const record = (id: string, state: MigrationState): MigrationRecord => ({
  id,
  vm: 'web1',
  kind: 'live',
  source: 'host-a',
  destination: 'host-b',
  destinationEndpoint: 'https://127.0.0.1:1',
  state,
  priority: 'normal',
  queuePosition: null,
  progress: 0.5,
  etaSeconds: 3,
  verdict: 'converging',
  downtimeMs: null,
  totalMs: null,
  bytesTransferred: 1,
  passes: 1,
  rate: { transferBps: 1, dirtyBps: 0 },
  remainingBytes: 1,
  downtimeLimitMs: 300,
  throttlePct: 0,
  policy: { maxDowntimeMs: 300, priority: 'normal', allowPostcopy: false },
  options: { includeStorage: false, retainSource: false },
  error: null,
  createdAt: '2026-01-01T00:00:00Z',
  startedAt: null,
  finishedAt: null,
  events: [],
  disks: [],
  incompatibilities: [],
});
const line = (o: object): string => JSON.stringify({ seq: 7, at: '2026-01-01T00:00:00Z', ...o });

test('event lines: a migration event carries a checked record; others a type; anything else is dropped', () => {
  const m = parseEvent(line({ type: 'migration', vm: 'web1', migration: record('m1', 'copying-memory') }));
  assert.ok(m && isMigrationEvent(m));
  assert.equal(m.migration.id, 'm1');
  const v = parseEvent(line({ type: 'vm.state', vm: 'web1', state: 'paused' }));
  assert.ok(v && !isMigrationEvent(v));
  assert.equal(v.type, 'vm.state');
  for (const bad of ['', 'not json', 'null', '[]', line({ type: 'migration', migration: { id: 'm1' } }), line({})])
    assert.equal(parseEvent(bad), null, bad);
});

test('pages load again only for events that change what they show', () => {
  // The least body each event type carries (the stream's typed union checks every field).
  const bodies: Record<string, object> = {
    'vm.state': { vm: 'web1', state: 'paused' },
    'migration.incoming': { vm: 'web1', jobId: 'm1', state: 'prepared' },
    'pool.changed': { pool: 'shared' },
    'host.changed': {
      migration: { enabled: true, maxLive: 2, maxStorage: 2, networks: [], tls: true, address: '127.0.0.1' },
    },
    'cluster.leader': { node: 'host-a' },
  };
  const ev = (type: string, state?: MigrationState) =>
    parseEvent(line(state ? { type, vm: 'web1', migration: record('m1', state) } : { type, ...bodies[type] }))!;
  const progress = ev('migration', 'copying-memory');
  const done = ev('migration', 'completed');
  assert.equal(endsMigration(progress), false);
  assert.equal(endsMigration(done), true);
  assert.deepEqual(
    [ev('vm.state'), ev('migration.incoming'), done, progress, ev('pool.changed'), 'connection' as const].map(
      changesVms,
    ),
    [true, true, true, false, false, true],
  );
  assert.deepEqual([ev('pool.changed'), ev('host.changed'), progress, done].map(changesHosts), [
    true,
    true,
    false,
    true,
  ]);
  assert.deepEqual([ev('cluster.leader'), progress, done].map(changesCluster), [true, false, true]);
});

test('a migration event replaces its record in the list, or adds it', () => {
  const list = [record('m1', 'queued'), record('m2', 'copying-memory')];
  const next = upsertRecord(list, record('m1', 'preparing'));
  assert.deepEqual(
    next.map((r) => `${r.id}:${r.state}`),
    ['m2:copying-memory', 'm1:preparing'],
  );
  assert.deepEqual(
    upsertRecord(undefined, record('m3', 'queued')).map((r) => r.id),
    ['m3'],
  );
  assert.equal(list.length, 2, 'the old list is left as it was');
});
