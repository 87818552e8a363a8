// What the resumable-copy tests (e2e resume-move, security peer-resume) share: the second disk
// they fill with a pattern, the VM's QEMUs on a host, the cut of a copy at a mark, and the check
// after a resumed move.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferryOk } from './cli.js';
import { hostData, serialLog, waitMigration, waitProbe, type TestLab } from './lab.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { hostQemuPids } from '../../src/lab/lab.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { sleep } from '../../src/util/exec.js';
import type { VmView } from '../../src/api/schemas.js';

/** A 48 MiB qcow2 whose first 40 MiB hold the byte 0x5a: real data for a copy to send. */
export function makeFillDisk(file: string): void {
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, '48M']);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 40M', file], { stdio: 'ignore' });
}

/** The QEMUs of VM `vmId` on `host`. */
export async function vmPids(l: TestLab, host: string, vmId: string): Promise<number[]> {
  return (await hostQemuPids(hostData(l, host))).filter((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(vmId);
    } catch {
      return false;
    }
  });
}

/**
 * Waits until each of the two disks' copy jobs (ids starting with `prefix`) on host-a passed
 * `mark` (0–1), read straight from the source QEMU so the cut lands at the mark and not a CLI
 * round trip later; returns both jobs' progress then.
 */
export async function copiesPast(
  l: TestLab,
  vm: VmView,
  prefix: string,
  mark: number,
  monitor = path.join(hostData(l, 'host-a'), 'run', vm.id, 'qmp-admin.sock'),
): Promise<{ done: number; total: number }> {
  // A stopped VM's copy runs in a disk daemon (QEMU, no guest), whose socket appears once the move opened the disks.
  const qmp = await QmpClient.connect(monitor, { vm: vm.name, timeoutMs: 60_000 });
  try {
    for (let i = 0; ; i++) {
      const jobs = (await qmp.execute('query-jobs')).filter((j) => j.id.startsWith(prefix));
      const at = {
        done: jobs.reduce((a, j) => a + j['current-progress'], 0),
        total: jobs.reduce((a, j) => a + j['total-progress'], 0),
      };
      // Each disk past the mark: the disks' copies run side by side, at their own pace.
      if (
        jobs.length === 2 &&
        jobs.every((j) => j['total-progress'] > 0 && j['current-progress'] >= j['total-progress'] * mark)
      )
        return at;
      assert.ok(i < 3000, 'the copy reached the cut');
      await sleep(20);
    }
  } finally {
    qmp.close();
  }
}

/**
 * Cuts move `id` of `vm` (two disks, host-a → host-b) once each disk's copy passed `mark` (0–1,
 * copiesPast, read on `monitor`): the destination's QEMU is killed. Returns the copy's progress
 * at the cut and the failed move's record.
 */
export async function cutCopyAt(
  l: TestLab,
  vm: VmView,
  id: string,
  mark: number,
  monitor?: string,
): Promise<{ done: number; total: number; cut: MigrationRecord }> {
  const at = await copiesPast(l, vm, 'mirror-', mark, monitor);
  const killed = await vmPids(l, 'host-b', vm.id);
  assert.ok(killed.length, "the destination's QEMU runs");
  for (const p of killed) process.kill(p, 'SIGKILL');
  const cut = await waitMigration(l, id, ['failed', 'cancelled', 'completed'], 90_000);
  assert.equal(cut.state, 'failed', `the cut move: ${JSON.stringify(cut.error)}`);
  return { ...at, cut };
}

/**
 * After a move of `name` (made with makeFillDisk's disk second) to host-b: exactly one QEMU
 * runs it, on host-b; then stopped, every acknowledged record is on its own disk and the second
 * disk's pattern is intact. Returns both hosts' serial logs.
 */
export async function assertMovedIntact(l: TestLab, name: string, vmId: string): Promise<string[]> {
  const show = (): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: l.lab });
  const v2 = await show();
  assert.equal(v2.host, 'host-b');
  for (let i = 0; (await vmPids(l, 'host-a', vmId)).length && i < 100; i++) await sleep(200);
  assert.deepEqual(await vmPids(l, 'host-a', vmId), [], 'no QEMU left on host-a');
  assert.equal((await vmPids(l, 'host-b', vmId)).length, 1, 'one QEMU on host-b');

  await waitProbe(l, v2, 10, 60_000);
  await ferryOk(['vm', 'stop', name, '--force'], { lab: l.lab, timeoutMs: 120_000 });
  const logs = await Promise.all(
    ['host-a', 'host-b'].map((h) => fsp.readFile(serialLog(l, h, vmId), 'utf8').catch(() => '')),
  );
  const ack = Math.max(...logs.map((x) => parseSerial(x).highestAck ?? 0));
  assert.ok(ack > 0, 'the guest acknowledged records');
  const disks = (await show()).disks;
  const own = disks[0]!;
  const rep = await verifyDiskImage(own.path, { format: own.format as 'qcow2', highestAck: ack });
  assert.equal(rep.ok, true, `records: ${rep.problems.slice(0, 3).join('; ')}`);
  const moved = disks[1];
  assert.ok(moved, 'the second disk moved');
  const read = execFileSync('qemu-io', ['-f', 'qcow2', '-r', '-c', 'read -P 0x5a 0 40M', moved.path], {
    encoding: 'utf8',
  });
  assert.doesNotMatch(read, /Pattern verification failed/);
  return logs;
}
