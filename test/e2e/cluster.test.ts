// The cluster foundation: a 3-host lab with one etcd member per host; nodes hold leases, a
// killed host is seen down by the others, and comes back up after `lab up`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { ferry, ferryOk } from './cli.js';
import { waitSerial } from './lab.js';
import { sleep } from '../../src/util/exec.js';
import type { LabStatus } from '../../src/lab/lab.js';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { labTempDir } from '../helpers.js';

interface ClusterView {
  name: string;
  nodes: Array<{ name: string; state: 'up' | 'down' }>;
}
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
  } catch {
    return false;
  }
};

test(
  'lab up --cluster: 3 etcd members, every node up; a killed host is down within its lease, back ' +
    'after lab up; lab down stops etcd',
  async (t) => {
    const dir = await labTempDir('fcl-');
    const lab = path.join(dir, 'lab');
    t.after(async () => {
      await ferry(['lab', 'down', '--dir', lab]);
      await fsp.rm(dir, { recursive: true, force: true });
    });
    const st = await ferryOk<LabStatus>(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster', '--json']);
    assert.equal(st.etcd.length, 3);
    for (const m of st.etcd) {
      assert.match(m.endpoint, /^https:\/\/127\.0\.0\.1:\d+$/);
      assert.ok(alive(m.pid));
    }
    const status = (): Promise<ClusterView> => ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab });
    assert.deepEqual(
      (await status()).nodes.map((n) => `${n.name}:${n.state}`),
      ['host-a:up', 'host-b:up', 'host-c:up'],
    );

    await ferryOk(['lab', 'kill', 'host-c', '--dir', lab]);
    const t0 = Date.now();
    let down = false;
    while (!down && Date.now() - t0 < 20_000) {
      down = (await status()).nodes.find((n) => n.name === 'host-c')?.state === 'down';
      if (!down) await sleep(250);
    }
    assert.ok(down, 'host-c seen down');
    process.stderr.write(`cluster: a killed host was seen down after ${Date.now() - t0} ms\n`);
    assert.deepEqual(
      (await status()).nodes.filter((n) => n.state === 'up').map((n) => n.name),
      ['host-a', 'host-b'],
      'two of three members keep the cluster',
    );

    await ferryOk(['lab', 'up', '--dir', lab]);
    for (let i = 0; i < 40 && (await status()).nodes.some((n) => n.state !== 'up'); i++) await sleep(250);
    assert.deepEqual(
      (await status()).nodes.map((n) => n.state),
      ['up', 'up', 'up'],
    );

    const before = await ferryOk<LabStatus>(['lab', 'status', '--dir', lab, '--json']);
    await ferryOk(['lab', 'down', '--dir', lab]);
    for (const m of before.etcd) assert.equal(alive(m.pid), false, `etcd member ${m.name} stopped`);
    const noCluster = await ferry(['cluster', 'status'], { lab });
    assert.notEqual(noCluster.code, 0);
  },
);

test(
  'HA: a host dies (agent, QEMUs and etcd member at once); its HA VM runs on another node within ' +
    'seconds, every acked record intact, never twice',
  async (t) => {
    const { parseSerial, verifyDiskImage } = await import('../../guest/records.js');
    const { hostQemuPids } = await import('../../src/lab/lab.js');
    const dir = await labTempDir('fha-');
    const lab = path.join(dir, 'lab');
    t.after(async () => {
      await ferry(['lab', 'down', '--dir', lab]);
      await fsp.rm(dir, { recursive: true, force: true });
    });
    await ferryOk(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster']);
    const vm = await ferryOk<{ id: string; disks: Array<{ path: string }> }>(
      [
        'vm',
        'new',
        'ha1',
        '--host',
        'host-a',
        '--guest',
        'probe',
        '--ha',
        '--path',
        path.join(lab, 'shared', 'ha1'),
        '--start',
        '--json',
      ],
      { lab },
    );
    const logOf = (h: string): string => path.join(lab, 'hosts', h, 'data', 'run', vm.id, 'serial.log');
    await waitSerial(logOf('host-a'), { acks: 20, lab, vm: 'ha1', host: 'host-a' });
    await ferryOk(['lab', 'kill', 'host-a', '--dir', lab]);
    const ackA = parseSerial(await fsp.readFile(logOf('host-a'), 'utf8')).highestAck ?? 0;
    assert.ok(ackA > 0);
    const t0 = Date.now();
    let where = '';
    while (!where && Date.now() - t0 < 30_000) {
      for (const h of ['host-b', 'host-c'])
        if ((await hostQemuPids(path.join(lab, 'hosts', h, 'data'))).length) where = h;
      if (!where) await sleep(200);
    }
    assert.ok(where, 'the HA VM was restarted on another node');
    // Wait for the guest to boot there and write again.
    let s = parseSerial('');
    while (Date.now() - t0 < 60_000 && !s.heartbeats.length) {
      await sleep(200);
      s = parseSerial(await fsp.readFile(logOf(where), 'utf8').catch(() => ''));
    }
    const failoverMs = Date.now() - t0;
    // The writer reports where it resumes once it has scanned its disk (after the first heartbeats).
    while (Date.now() - t0 < 90_000 && s.writerStart === null) {
      await sleep(200);
      s = parseSerial(await fsp.readFile(logOf(where), 'utf8').catch(() => ''));
    }
    process.stderr.write(`HA: host-a killed → heartbeat on ${where} after ${failoverMs} ms\n`);
    assert.ok(s.heartbeats.length > 0, 'heartbeat on the new node');
    assert.ok((s.writerStart ?? 0) > ackA, 'the writer continues after every record acknowledged on host-a');
    const pids = [
      ...(await hostQemuPids(path.join(lab, 'hosts', 'host-b', 'data'))),
      ...(await hostQemuPids(path.join(lab, 'hosts', 'host-c', 'data'))),
    ];
    assert.equal(pids.length, 1, 'never two QEMUs on that disk');
    const v = await ferryOk<{ host: string; state: string }>(['vm', 'show', 'ha1', '--json'], { lab });
    assert.equal(v.host, where);
    assert.equal(v.state, 'running');
    // host-a comes back: it must not run or claim the VM any more.
    await ferryOk(['lab', 'up', '--dir', lab]);
    let owners: string[] = [];
    for (let i = 0; i < 60; i++) {
      owners = (await ferryOk<Array<{ name: string; host: string }>>(['vm', 'list', '--json'], { lab }))
        .filter((x) => x.name === 'ha1')
        .map((x) => x.host);
      if (owners.length === 1) break;
      await sleep(250); // host-a rejoins the cluster and forgets the VM
    }
    assert.deepEqual(owners, [where], 'exactly one host has the VM');
    assert.deepEqual(await hostQemuPids(path.join(lab, 'hosts', 'host-a', 'data')), []);
    await ferryOk(['vm', 'stop', 'ha1'], { lab });
    const ack = Math.max(ackA, parseSerial(await fsp.readFile(logOf(where), 'utf8')).highestAck ?? 0);
    const report = await verifyDiskImage(vm.disks[0]!.path, { format: 'qcow2', highestAck: ack });
    assert.equal(report.ok, true, report.problems.join('; '));
  },
);
