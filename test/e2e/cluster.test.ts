// The cluster foundation: a 3-host lab with one etcd member per host; nodes hold leases, a
// killed host is seen down by the others, and comes back up after `lab up`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { ferry, ferryOk } from './cli.js';
import { sleep } from '../../src/util/exec.js';
import type { LabStatus } from '../../src/lab/lab.js';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

interface ClusterView { name: string; nodes: Array<{ name: string; state: 'up' | 'down' }> }
const alive = (pid: number): boolean => { try { process.kill(pid, 0); return !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z '); } catch { return false; } };

test('lab up --cluster: 3 etcd members, every node up; a killed host is down within its lease, back after lab up; lab down stops etcd', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fcl-'));
  const lab = path.join(dir, 'lab');
  t.after(async () => { await ferry(['lab', 'down', '--dir', lab]); await fsp.rm(dir, { recursive: true, force: true }); });
  const st = await ferryOk<LabStatus>(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster', '--json']);
  assert.equal(st.etcd.length, 3);
  for (const m of st.etcd) { assert.match(m.endpoint, /^https:\/\/127\.0\.0\.1:\d+$/); assert.ok(alive(m.pid)); }
  const status = (): Promise<ClusterView> => ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab });
  assert.deepEqual((await status()).nodes.map((n) => `${n.name}:${n.state}`), ['host-a:up', 'host-b:up', 'host-c:up']);

  await ferryOk(['lab', 'kill', 'host-c', '--dir', lab]);
  const t0 = Date.now();
  let down = false;
  while (!down && Date.now() - t0 < 20_000) {
    down = (await status()).nodes.find((n) => n.name === 'host-c')?.state === 'down';
    if (!down) await sleep(250);
  }
  assert.ok(down, 'host-c seen down');
  process.stderr.write(`cluster: a killed host was seen down after ${Date.now() - t0} ms\n`);
  assert.deepEqual((await status()).nodes.filter((n) => n.state === 'up').map((n) => n.name), ['host-a', 'host-b'], 'two of three members keep the cluster');

  await ferryOk(['lab', 'up', '--dir', lab]);
  for (let i = 0; i < 40 && (await status()).nodes.some((n) => n.state !== 'up'); i++) await sleep(250);
  assert.deepEqual((await status()).nodes.map((n) => n.state), ['up', 'up', 'up']);

  const before = await ferryOk<LabStatus>(['lab', 'status', '--dir', lab, '--json']);
  await ferryOk(['lab', 'down', '--dir', lab]);
  for (const m of before.etcd) assert.equal(alive(m.pid), false, `etcd member ${m.name} stopped`);
  const noCluster = await ferry(['cluster', 'status'], { lab });
  assert.notEqual(noCluster.code, 0);
});
