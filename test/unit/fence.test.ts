// The fence's rule and files (src/cluster/fence.ts): it fences only when the node lease went
// unrenewed for the margin, once per lease; it keeps a gone agent's lease (a restart) only while
// it renews it itself, within the grace, until a new agent joins; it bridges a running agent's
// late renewals, never a stopped one's; the agent's liveness file is written whole, newest
// last; the fence report is read once. (The fence killing real QEMUs: test/e2e/cluster-fence.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  Liveness,
  LivenessFile,
  LivenessWriter,
  agentState,
  bridgeAfterMs,
  fenceDue,
  fenceFiles,
  keepVerdict,
  processAlive,
  takeFenceReport,
  type Keeping,
} from '../../src/cluster/fence.js';

const live = (renewedAt: number, leaseId = '7'): Liveness => ({
  version: 1,
  node: 'host-a',
  cluster: 'lab',
  endpoints: ['https://127.0.0.1:2379'],
  tls: { ca: '/ca', cert: '/c', key: '/k' },
  leaseId,
  ttlMs: 5000,
  lossAfterMs: 2500,
  renewedAt,
  agentPid: 42,
  graceMs: 120_000,
});

test('fenceDue: only once the lease went unrenewed for the margin, and once per lease', () => {
  const t = 1_000_000;
  assert.equal(fenceDue(null, t, null), false, 'no agent has written anything: nothing to guard yet');
  // A healthy agent renews every TTL/3 (about 1.7 s): never due.
  for (const age of [0, 1000, 1700, 2500]) assert.equal(fenceDue(live(t - age), t, null), false, `${age} ms`);
  assert.equal(fenceDue(live(t - 2501), t, null), true);
  assert.equal(fenceDue(live(t - 9000), t, '7'), false, 'this lease was fenced already');
  assert.equal(fenceDue(live(t - 9000, '8'), t, '7'), true, 'a later lease is fenced again');
});

test("keepVerdict: a gone agent's lease is kept within the grace; a stopped (hung) agent's never", () => {
  const t = 1_000_000;
  const l = live(t - 1000);
  const dead = 'gone';
  assert.deepEqual(keepVerdict(null, t, dead, null, null), { keep: null, why: 'no-agent-yet' });
  assert.deepEqual(keepVerdict(l, t, 'running', null, null), { keep: null, why: 'agent-alive' }, 'renewing on time');
  for (const age of [1000, 2400, 9000])
    assert.deepEqual(
      keepVerdict(live(t - age), t, 'stopped', null, null),
      { keep: null, why: 'agent-stopped' },
      `a hung agent is fenced by the margin (${age} ms)`,
    );
  const k = keepVerdict(l, t, dead, null, null).keep;
  assert.deepEqual(k, { leaseId: '7', since: t, renewedAt: 0, expired: false }, 'a gone agent: keep its lease');
  assert.ok(k);
  assert.equal(keepVerdict(l, t + 500, dead, null, k).keep, k, 'the same keeping goes on');
  assert.deepEqual(keepVerdict(live(t - 2600), t, dead, null, null), { keep: null, why: 'overdue' }, 'too late');
  assert.deepEqual(keepVerdict({ ...l, graceMs: 0 }, t, dead, null, null), { keep: null, why: 'no-grace' });
  assert.deepEqual(keepVerdict(l, t, dead, '7', null), { keep: null, why: 'fenced' });
  assert.deepEqual(keepVerdict({ ...l, released: true }, t, dead, null, k), { keep: null, why: 'released' });
  // The agent renews again (after the fence began), or a new agent wrote its own lease.
  assert.deepEqual(keepVerdict(live(t + 100), t + 200, dead, null, k), { keep: null, why: 'renewed' });
  assert.deepEqual(keepVerdict(live(t + 100, '8'), t + 200, 'running', null, k), { keep: null, why: 'agent-alive' });
});

test('keepVerdict: a running agent whose renewals are late is bridged until its next renewal, for the grace', () => {
  const t = 1_000_000;
  const l = live(t); // margin 2500 ms: bridged from 1250 ms
  assert.equal(bridgeAfterMs(l.lossAfterMs), 1250);
  assert.deepEqual(keepVerdict(l, t + 1250, 'running', null, null), { keep: null, why: 'agent-alive' });
  const k = keepVerdict(l, t + 1251, 'running', null, null).keep;
  assert.deepEqual(k, { leaseId: '7', since: t + 1251, renewedAt: 0, expired: false }, 'late: the fence renews too');
  assert.ok(k);
  // Its keepalives count: not due while they succeed, though the agent's own renewal is older than the margin.
  k.renewedAt = t + 1300;
  assert.equal(fenceDue(l, t + 3000, null, k), false);
  assert.equal(keepVerdict(l, t + 3000, 'running', null, k).keep, k);
  // The agent's next renewal lands: the fence lets go.
  assert.deepEqual(keepVerdict(live(t + 1400), t + 3100, 'running', null, k), { keep: null, why: 'renewed' });
  // The renewal that ends a bridge can be older (its send time) than the fence's last: the bridge's
  // renewals still count, carried, so that the lease is judged by the newest of both.
  const kc: Keeping = { leaseId: '7', since: t + 1300, renewedAt: t + 3500, expired: false };
  const slow = live(t + 1400); // sent at +1.4 s, answered (and written) at +4.4 s
  assert.deepEqual(keepVerdict(slow, t + 4450, 'running', null, kc), { keep: null, why: 'renewed' });
  assert.equal(fenceDue(slow, t + 4450, null, null), true, 'alone, the agent renewal is older than the margin');
  assert.equal(fenceDue(slow, t + 4450, null, kc), false, 'with the carried bridge it is not');
  assert.deepEqual(keepVerdict(slow, t + 4500, 'running', null, null, kc).keep, {
    leaseId: '7',
    since: t + 4500,
    renewedAt: t + 3500,
    expired: false,
  });
  assert.deepEqual(keepVerdict(slow, t + 6001, 'running', null, null, kc), { keep: null, why: 'overdue' });
  // No keepalive of the fence succeeded within the margin: fenced as before.
  const k2 = { ...k, renewedAt: 0 };
  assert.deepEqual(keepVerdict(l, t + 2501, 'running', null, k2), { keep: null, why: 'overdue' });
  assert.equal(fenceDue(l, t + 2501, null, k2), true);
  // An agent that does not renew itself for the grace is wedged: no more bridging, fenced at once.
  const k3 = { ...k, renewedAt: t + l.graceMs };
  assert.equal(keepVerdict(l, t + l.graceMs, 'running', null, k3).keep, k3);
  assert.deepEqual(keepVerdict(l, t + l.graceMs + 1, 'running', null, k3), { keep: null, why: 'agent-wedged' });
  assert.equal(fenceDue(l, t + l.graceMs + 1, null, null), true);
  // No grace configured: nothing is kept, late renewals are fenced by the margin as before.
  assert.deepEqual(keepVerdict({ ...l, graceMs: 0 }, t + 1300, 'running', null, null), {
    keep: null,
    why: 'no-grace',
  });
  // A stopped agent is never bridged, nor a lease the agent gave up.
  assert.deepEqual(keepVerdict(l, t + 1300, 'stopped', null, k), { keep: null, why: 'agent-stopped' });
  assert.deepEqual(keepVerdict({ ...l, released: true }, t + 1300, 'running', null, null), {
    keep: null,
    why: 'released',
  });
});

test('agentState: this process runs; a pid that does not exist is gone', () => {
  assert.equal(agentState(process.pid), 'running');
  assert.equal(agentState(2 ** 22 + 1), 'gone');
});

test('fenceDue while the fence keeps the lease: its keepalives count; no renewal, grace over or expired: fence', () => {
  const t = 1_000_000;
  const l = live(t);
  const k: Keeping = { leaseId: '7', since: t + 100, renewedAt: 0, expired: false };
  assert.equal(fenceDue(l, t + 2501, null, k), true, 'no keepalive of the fence succeeded: fenced as today');
  // Keepalives sent every TTL/3 and answered: never due, for as long as they succeed.
  for (let at = t + 100; at < t + 60_000; at += 1667) {
    k.renewedAt = at;
    assert.equal(fenceDue(l, at + 2400, null, k), false, `${at - t} ms`);
    assert.equal(keepVerdict(l, at + 2400, 'gone', null, k).keep, k);
  }
  // A partition: the last keepalive that succeeded was sent more than the margin ago.
  assert.equal(fenceDue(l, k.renewedAt + 2501, null, k), true);
  assert.deepEqual(keepVerdict(l, k.renewedAt + 2501, 'gone', null, k), { keep: null, why: 'overdue' });
  // A keepalive of another lease does not count.
  assert.equal(fenceDue(live(t, '8'), t + 2501, null, { ...k, renewedAt: t + 2000 }), true);
  // The grace ends: the fence stops keeping, and with its keeping gone the lease is overdue at once.
  const late = { ...k, renewedAt: t + 120_000 };
  assert.deepEqual(keepVerdict(l, t + 120_100, 'gone', null, late), { keep: null, why: 'grace-over' });
  assert.equal(fenceDue(l, t + 120_100, null, null), true);
  // etcd answered that the lease expired: fence now, once.
  assert.equal(fenceDue(l, t + 200, null, { ...k, renewedAt: t + 150, expired: true }), true);
  assert.equal(fenceDue(l, t + 200, '7', { ...k, expired: true }), false);
});

test('processAlive: this process is; a pid that does not exist is not', () => {
  assert.equal(processAlive(process.pid), true);
  assert.equal(processAlive(0), false);
  assert.equal(processAlive(2 ** 22 + 1), false);
});

test("liveness file: an older agent's file (no graceMs) gets the default grace", () => {
  const { graceMs, ...old } = live(1);
  assert.equal(graceMs, 120_000);
  assert.equal(Liveness.parse(old).graceMs, 60_000);
});

test('liveness file: written whole and read back; the last write wins', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ffn-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  const w = new LivenessWriter(dir);
  await Promise.all([w.write(live(1)), w.write(live(2)), w.write(live(3))]);
  await w.write(live(4));
  const back = Liveness.parse(JSON.parse(await fsp.readFile(fenceFiles(dir).liveness, 'utf8')));
  assert.equal(back.renewedAt, 4);
  assert.deepEqual(
    (await fsp.readdir(path.dirname(fenceFiles(dir).liveness))).filter((f) => f.includes('.tmp')),
    [],
    'no temp file left',
  );
});

test("liveness file: the fence's reader parses it again only once replaced; a torn one is re-read", async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ffn-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  const file = fenceFiles(dir).liveness;
  const r = new LivenessFile(file);
  assert.equal(await r.read(), null, 'no file yet');
  const w = new LivenessWriter(dir);
  await w.write(live(1));
  const a = await r.read();
  assert.equal(a?.renewedAt, 1);
  assert.equal(await r.read(), a, 'unchanged: the same parsed value');
  await w.write(live(2));
  assert.equal((await r.read())?.renewedAt, 2, 'replaced: read again');
  await fsp.writeFile(file, '{"version":1,"no');
  assert.equal(await r.read(), null, 'torn: nothing (the fence keeps its last good one)');
  await fsp.writeFile(file, JSON.stringify(live(3)));
  assert.equal((await r.read())?.renewedAt, 3, 'completed in place: read again');
});

test('fence report: the VMs the fence stopped, read once; a bad report counts as none', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ffn-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  assert.deepEqual(await takeFenceReport(dir), []);
  await fsp.mkdir(path.join(dir, 'run'));
  await fsp.writeFile(fenceFiles(dir).report, JSON.stringify({ leaseId: '7', at: 'x', vms: ['w1', 'w2'] }));
  assert.deepEqual(await takeFenceReport(dir), ['w1', 'w2']);
  assert.deepEqual(await takeFenceReport(dir), [], 'gone once read');
  await fsp.writeFile(fenceFiles(dir).report, '{"vms": 3}');
  assert.deepEqual(await takeFenceReport(dir), []);
});
