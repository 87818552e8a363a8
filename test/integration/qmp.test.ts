import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { createVm, startVm, pauseVm, resumeVm, vmState } from '../../src/vm/lifecycle.js';
import { bootblockVm } from '../../src/vm/guests.js';
import { QemuProcess, QemuStartError } from '../../src/qemu/process.js';
import { FerryError } from '../../src/errors.js';
import { tempDir, testAccel, testPools } from '../helpers.js';

test(
  'QMP: typed calls, pause/resume state, a stopped QEMU times out, abort returns at once, a dead ' +
    'QEMU fails pending calls',
  async (t) => {
    const dir = await tempDir(t);
    const g = bootblockVm({ name: 'qmp-vm', configPath: path.join(dir, 'vm') });
    const spec = await createVm(g.spec, g.create);
    const proc = await startVm(spec, {
      runDir: path.join(dir, 'run'),
      accel: await testAccel(),
      pools: testPools(dir),
    });
    t.after(async () => {
      try {
        process.kill(proc.pid, 'SIGCONT');
      } catch {
        /* gone */
      }
      await proc.kill();
    });

    const v = await proc.qmp.execute('query-version');
    assert.equal(v.qemu.major >= 7, true);
    assert.deepEqual(await vmState(proc), { state: 'running', qemu: 'running' });
    // (A VM starts paused and runs once its disks are checked: its history begins with a RESUME.)
    const beforePause = proc.qmp.eventMark;
    await pauseVm(proc);
    await proc.qmp.waitEvent((e) => e.event === 'STOP', { since: beforePause, timeoutMs: 5000 });
    assert.equal((await vmState(proc)).state, 'paused');
    const beforeResume = proc.qmp.eventMark;
    await resumeVm(proc);
    // RESUME arrived before we asked: the history still has it.
    const resumed = await proc.qmp.waitEvent((e) => e.event === 'RESUME', { since: beforeResume, timeoutMs: 5000 });
    assert.ok(resumed.index >= beforeResume && beforeResume >= 1);
    assert.equal((await vmState(proc)).state, 'running');

    // A QMP error carries the command, the VM and QEMU's class.
    await assert.rejects(proc.qmp.execute('blockdev-del', { 'node-name': 'nope' }), (e: FerryError) => {
      assert.equal(e.code, 'E_QMP');
      assert.equal(e.context.command, 'blockdev-del');
      assert.equal(e.context.vm, 'qmp-vm');
      assert.match(e.message, /nope/);
      return true;
    });

    process.kill(proc.pid, 'SIGSTOP');
    const t0 = Date.now();
    await assert.rejects(
      proc.qmp.execute('query-status', undefined, { timeoutMs: 500 }),
      (e: FerryError) => e.code === 'E_TIMEOUT',
    );
    assert.ok(Date.now() - t0 < 2000);

    const ac = new AbortController();
    const pending = proc.qmp.execute('query-status', undefined, { signal: ac.signal, timeoutMs: 60_000 });
    const t1 = Date.now();
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(pending, (e: FerryError) => e.code === 'E_ABORTED');
    assert.ok(Date.now() - t1 < 1000, 'abort returns at once');

    // The monitor closes when QEMU dies: every pending call fails at once, not at its timeout.
    const p1 = proc.qmp.execute('query-status', undefined, { timeoutMs: 60_000 });
    const p2 = proc.qmp.waitEvent((e) => e.event === 'NEVER', { timeoutMs: 60_000 });
    const t2 = Date.now();
    process.kill(proc.pid, 'SIGKILL');
    await assert.rejects(p1, (e: FerryError) => e.code === 'E_QMP_CLOSED');
    await assert.rejects(p2, (e: FerryError) => e.code === 'E_QMP_CLOSED');
    assert.ok(Date.now() - t2 < 5000);
    await proc.exited;
    assert.equal((await vmState(proc)).state, 'stopped');
  },
);

test('QEMU that exits at start-up reports its own reason', async (t) => {
  const dir = await tempDir(t);
  const run = path.join(dir, 'run');
  await assert.rejects(
    QemuProcess.spawn(
      [
        '-nodefaults',
        '-display',
        'none',
        '-accel',
        'tcg',
        '-qmp',
        `unix:${run}/qmp.sock,server=on,wait=off`,
        '-pidfile',
        `${run}/pid`,
        '-blockdev',
        JSON.stringify({ driver: 'file', filename: path.join(dir, 'missing.qcow2'), 'node-name': 'f' }),
      ],
      { vm: 'early', runDir: run, qmpSocket: `${run}/qmp.sock`, pidFile: `${run}/pid`, timeoutMs: 10_000 },
    ),
    (e: unknown) => {
      assert.ok(e instanceof QemuStartError);
      assert.equal(e.code, 'E_QEMU_START');
      assert.match(e.message, /missing\.qcow2/);
      assert.match(e.message, /No such file or directory/);
      return true;
    },
  );
});

test('starting a VM whose disk image is gone names the disk, before QEMU runs', async (t) => {
  const dir = await tempDir(t);
  const g = bootblockVm({ name: 'gone', configPath: path.join(dir, 'vm') });
  const spec = await createVm(g.spec, g.create);
  const { rm } = await import('node:fs/promises');
  await rm(spec.disks[0]!.path);
  await assert.rejects(
    startVm(spec, { runDir: path.join(dir, 'run'), accel: await testAccel(), pools: testPools(dir) }),
    (e: FerryError) => {
      assert.equal(e.code, 'E_DISK_NOT_FOUND');
      assert.match(e.message, /boot0/);
      assert.match(e.message, /boot\.img/);
      return true;
    },
  );
});
