// The fence's rule and files (src/cluster/fence.ts): it fences only when the node lease went
// unrenewed for the margin, once per lease; the agent's liveness file is written whole, newest
// last; the fence report is read once. (The fence killing real QEMUs: test/e2e/cluster-fence.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Liveness, LivenessWriter, fenceDue, fenceFiles, takeFenceReport } from '../../src/cluster/fence.js';

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
