// The event→metric mapping of the agent (src/agent/metrics.ts): events in, Prometheus out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AgentMetrics } from '../../src/agent/metrics.js';
import { EventBus } from '../../src/events/bus.js';
import { SlotQueue } from '../../src/migration/queue.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

function record(over: Partial<MigrationRecord>): MigrationRecord {
  return {
    id: 'm1',
    vm: 'web1',
    kind: 'live',
    source: 'host-a',
    destination: 'host-b',
    destinationEndpoint: null,
    state: 'copying-memory',
    priority: 'normal',
    queuePosition: null,
    progress: 0.5,
    etaSeconds: null,
    verdict: null,
    downtimeMs: null,
    totalMs: null,
    bytesTransferred: 0,
    passes: 0,
    rate: { transferBps: 0, dirtyBps: 0 },
    remainingBytes: null,
    downtimeLimitMs: null,
    throttlePct: 0,
    policy: { maxDowntimeMs: 300, priority: 'normal', allowPostcopy: false },
    options: { includeStorage: false, retainSource: false },
    error: null,
    createdAt: new Date().toISOString(),
    startedAt: null,
    finishedAt: null,
    events: [],
    disks: [],
    incompatibilities: [],
    ...over,
  };
}

async function value(m: AgentMetrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = m.registry.getSingleMetric(name);
  assert.ok(metric, `${name} exists`);
  const got = await metric.get();
  const v = got.values.find(
    (x) =>
      (x as { metricName?: string }).metricName === undefined &&
      Object.entries(labels).every(([k, l]) => x.labels[k] === l),
  );
  return v?.value ?? 0;
}

async function histogram(m: AgentMetrics, name: string, kind: string): Promise<{ count: number; sum: number }> {
  const got = await m.registry.getSingleMetric(name)!.get();
  const pick = (suffix: string): number =>
    got.values.find((x) => (x as { metricName?: string }).metricName === name + suffix && x.labels.kind === kind)
      ?.value ?? 0;
  return { count: pick('_count'), sum: pick('_sum') };
}

function setup(): { bus: EventBus; slots: SlotQueue; storageSlots: SlotQueue; m: AgentMetrics } {
  const bus = new EventBus();
  const slots = new SlotQueue(() => 1);
  const storageSlots = new SlotQueue(() => 2);
  const vms = { list: () => Promise.resolve([{ state: 'running' }, { state: 'running' }, { state: 'stopped' }]) };
  const m = new AgentMetrics({ events: bus, vms, migrations: { slots, storageSlots } }, { defaultMetrics: false });
  return { bus, slots, storageSlots, m };
}

test('a move counts its bytes as it progresses and its result, duration and downtime once at its end', async () => {
  const { bus, m } = setup();
  bus.emit('migration', { vm: 'web1', migration: record({ bytesTransferred: 1000 }) });
  assert.equal(await value(m, 'ferry_migration_bytes_total', { kind: 'live' }), 1000);
  bus.emit('migration', { vm: 'web1', migration: record({ bytesTransferred: 5000 }) });
  assert.equal(await value(m, 'ferry_migration_bytes_total', { kind: 'live' }), 5000, 'the running total, not a sum');
  const done = record({ state: 'completed', bytesTransferred: 6000, totalMs: 4200, downtimeMs: 35 });
  bus.emit('migration', { vm: 'web1', migration: done });
  bus.emit('migration', { vm: 'web1', migration: done }); // published again: counted once
  assert.equal(await value(m, 'ferry_migration_bytes_total', { kind: 'live' }), 6000);
  assert.equal(await value(m, 'ferry_migrations_total', { kind: 'live', result: 'completed' }), 1);
  assert.deepEqual(await histogram(m, 'ferry_migration_duration_seconds', 'live'), { count: 1, sum: 4.2 });
  assert.deepEqual(await histogram(m, 'ferry_migration_downtime_seconds', 'live'), { count: 1, sum: 0.035 });
  assert.equal(await value(m, 'ferry_events_total', { type: 'migration' }), 4);
  m.close();
});

test('failed and cancelled moves count by result; they add no duration or downtime', async () => {
  const { bus, m } = setup();
  bus.emit('migration', {
    vm: 'a',
    migration: record({ id: 'f1', kind: 'shared-nothing', state: 'failed', totalMs: 900, bytesTransferred: 10 }),
  });
  bus.emit('migration', { vm: 'b', migration: record({ id: 'c1', kind: 'storage', state: 'cancelled', totalMs: 5 }) });
  assert.equal(await value(m, 'ferry_migrations_total', { kind: 'shared-nothing', result: 'failed' }), 1);
  assert.equal(await value(m, 'ferry_migrations_total', { kind: 'storage', result: 'cancelled' }), 1);
  assert.equal(await value(m, 'ferry_migration_bytes_total', { kind: 'shared-nothing' }), 10);
  assert.equal((await histogram(m, 'ferry_migration_duration_seconds', 'shared-nothing')).count, 0);
  assert.equal((await histogram(m, 'ferry_migration_downtime_seconds', 'storage')).count, 0);
  m.close();
});

test('HA restarts, fencing and leader changes count their events; names follow Prometheus', async () => {
  const { bus, m } = setup();
  bus.emit('cluster.leader', { node: 'host-a' });
  bus.emit('vm.ha-started', { vm: 'ha1', generation: 2 });
  bus.emit('vm.ha-started', { vm: 'ha2', generation: 3, reason: 'restarted after self-fence' });
  bus.emit('cluster.lease-lost', { node: 'host-a', reason: 'lease expired' });
  bus.emit('vm.fenced', { vm: 'ha1' });
  assert.equal(await value(m, 'ferry_leader_changes_total'), 1);
  assert.equal(await value(m, 'ferry_ha_restarts_total'), 2);
  assert.equal(await value(m, 'ferry_fencing_events_total'), 1);
  assert.equal(await value(m, 'ferry_fenced_vms_total'), 1);
  assert.equal(await value(m, 'ferry_events_total', { type: 'vm.ha-started' }), 2);
  const text = await m.registry.metrics();
  assert.match(text, /^# TYPE ferry_events_total counter$/m, 'ferry_events_total is a counter now');
  for (const line of text.split('\n').filter((l) => l.startsWith('# TYPE '))) {
    const [, , name, type] = line.split(' ');
    assert.equal(name!.endsWith('_total'), type === 'counter', `${name} is a ${type}: _total only on counters`);
  }
  m.close();
});

test('events published before the metrics existed (recovery at start) are counted from the ring', async () => {
  const bus = new EventBus();
  bus.emit('migration', { vm: 'web1', migration: record({ state: 'failed', totalMs: 1 }) });
  const slots = new SlotQueue(() => 1);
  const m = new AgentMetrics(
    { events: bus, vms: { list: () => Promise.resolve([]) }, migrations: { slots, storageSlots: slots } },
    { defaultMetrics: false },
  );
  assert.equal(await value(m, 'ferry_migrations_total', { kind: 'live', result: 'failed' }), 1);
  m.close();
});

test('slots in use, queue length, VMs and agent up are read at scrape time', async () => {
  const { slots, storageSlots, m } = setup();
  assert.equal(await value(m, 'ferry_agent_up'), 1);
  assert.equal(await value(m, 'ferry_vms', { state: 'running' }), 2);
  assert.ok(slots.tryAcquire('m1'));
  const ac = new AbortController();
  const waiting = slots.acquire('m2', 'normal', ac.signal);
  assert.ok(storageSlots.tryAcquire('s1'));
  assert.equal(await value(m, 'ferry_migration_slots_in_use', { class: 'live' }), 1);
  assert.equal(await value(m, 'ferry_migration_slots_in_use', { class: 'storage' }), 1);
  assert.equal(await value(m, 'ferry_migration_queue_length', { class: 'live' }), 1);
  assert.equal(await value(m, 'ferry_migration_queue_length', { class: 'storage' }), 0);
  ac.abort();
  await assert.rejects(waiting);
  slots.release('m1');
  assert.equal(await value(m, 'ferry_migration_slots_in_use', { class: 'live' }), 0);
  assert.equal(await value(m, 'ferry_migration_queue_length', { class: 'live' }), 0);
  m.close();
});
