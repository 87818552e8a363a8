// The agent's /metrics after real moves in a 2-host lab: scraped over mutual TLS with the
// lab's admin certificate, the way Prometheus would with a client certificate.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { ferryOk } from './cli.js';
import { useLab } from './lab.js';
import { AgentClient } from '../../src/api/client.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

const L = useLab(2);

async function scrape(host: string): Promise<Map<string, number>> {
  const h = L.status.hosts.find((x) => x.name === host)!;
  const domain = path.join(L.lab, 'domain');
  const client = new AgentClient({
    endpoint: h.endpoint,
    host,
    credentials: {
      ca: path.join(domain, 'ca.crt'),
      cert: path.join(domain, 'admins', 'admin.crt'),
      key: path.join(domain, 'admins', 'admin.key'),
    },
  });
  try {
    const text = (await client.request('GET', '/metrics', undefined, { timeoutMs: 10_000 })) as string;
    const out = new Map<string, number>();
    for (const line of text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const i = line.lastIndexOf(' ');
      out.set(line.slice(0, i), Number(line.slice(i + 1)));
    }
    return out;
  } finally {
    client.close();
  }
}

test('after a live move and a storage move, the agents count them in /metrics', async () => {
  const before = await scrape('host-a');
  assert.equal(before.get('ferry_agent_up'), 1);
  assert.equal(before.get('ferry_migrations_total{kind="live",result="completed"}') ?? 0, 0);

  await ferryOk<VmView>(
    ['vm', 'new', 'm1', '--host', 'host-a', '--guest', 'bootblock', '--path', path.join(L.lab, 'shared', 'm1')],
    { lab: L.lab },
  );
  await ferryOk(['vm', 'start', 'm1'], { lab: L.lab });
  const moved = await ferryOk<MigrationRecord>(
    ['move-vm', 'm1', '--to', 'host-b', '--max-downtime', '5000', '--json'],
    { lab: L.lab },
  );
  assert.equal(moved.state, 'completed', JSON.stringify(moved.error));
  const stored = await ferryOk<MigrationRecord>(
    ['move-storage', 'm1', '--path', path.join(L.lab, 'shared', 'm1-moved'), '--json'],
    { lab: L.lab },
  );
  assert.equal(stored.state, 'completed', JSON.stringify(stored.error));

  const a = await scrape('host-a');
  assert.equal(a.get('ferry_migrations_total{kind="live",result="completed"}'), 1);
  assert.equal(a.get('ferry_migration_duration_seconds_count{kind="live"}'), 1);
  const seconds = a.get('ferry_migration_duration_seconds_sum{kind="live"}')!;
  assert.ok(Math.abs(seconds - moved.totalMs! / 1000) < 0.001, `duration ${seconds} s, record ${moved.totalMs} ms`);
  assert.equal(a.get('ferry_migration_downtime_seconds_count{kind="live"}'), 1);
  assert.ok(Math.abs(a.get('ferry_migration_downtime_seconds_sum{kind="live"}')! - moved.downtimeMs! / 1000) < 0.001);
  assert.equal(a.get('ferry_migration_bytes_total{kind="live"}'), moved.bytesTransferred);
  assert.ok(moved.bytesTransferred > 0);
  assert.ok(a.get('ferry_events_total{type="migration"}')! > 0);
  assert.equal(a.get('ferry_migration_slots_in_use{class="live"}'), 0, 'the slot is given back');
  assert.equal(a.get('ferry_migration_queue_length{class="live"}'), 0);
  assert.equal(a.get('ferry_vms{state="running"}'), 0);

  const b = await scrape('host-b');
  assert.equal(b.get('ferry_migrations_total{kind="storage",result="completed"}'), 1);
  assert.equal(b.get('ferry_migration_duration_seconds_count{kind="storage"}'), 1);
  assert.equal(b.get('ferry_migration_bytes_total{kind="storage"}'), stored.bytesTransferred);
  assert.equal(b.get('ferry_migration_slots_in_use{class="storage"}'), 0);
  assert.equal(b.get('ferry_vms{state="running"}'), 1);
  assert.equal(b.get('ferry_migrations_total{kind="live",result="completed"}') ?? 0, 0, 'counted by the source only');

  await ferryOk(['vm', 'stop', 'm1', '--force'], { lab: L.lab });
});
