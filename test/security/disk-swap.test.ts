// A disk swapped while QEMU opens it (issue #14, symlink races on shared pools): whoever writes a
// pool can put a link to another file (here another VM's disk on this host) in place of a disk
// after the agent checked it and before QEMU opened it, and put the disk back after. The race is
// won here on purpose: the test swaps the file around the agent's spawn of QEMU (after every
// check the agent makes before it), so QEMU opens the other VM's disk. The start, and a stopped
// VM's disk daemon, must then refuse: QEMU stopped before the guest ran, the other disk untouched.
// An image QEMU adds while it runs (a storage move's target, a checkpoint's overlay) is checked as well,
// and a checkpoint's commit writes into the file QEMU opened at start, not into what its path names by then.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { createVm, openDisksForCopy, runtimePaths, startVm } from '../../src/vm/lifecycle.js';
import { probeVm } from '../../src/vm/guests.js';
import { QemuProcess, isQemuAlive } from '../../src/qemu/process.js';
import { StorageDaemon } from '../../src/qemu/storage-daemon.js';
import { blockdevFiles, checkOpenedFiles } from '../../src/qemu/opened-files.js';
import { setQemuUser } from '../../src/qemu/user.js';
import { addImageNode } from '../../src/migration/block.js';
import { listCheckpoints, removeCheckpoint, takeCheckpoint } from '../../src/checkpoint/checkpoints.js';
import { checkDiskChains } from '../../src/vm/disk-chains.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { refusedWith, tempDir, testAccel, testPools, waitForFile } from '../helpers.js';

const sha = async (file: string): Promise<string> => {
  const { createHash } = await import('node:crypto');
  return createHash('sha256')
    .update(await fsp.readFile(file))
    .digest('hex');
};

/** Two probe VMs in one pool, QEMU as root: `vm` whose file gets swapped, `other` whose disk the link names. */
async function twoVms(t: TestContext, tag: string) {
  setQemuUser(null);
  const dir = await tempDir(t, 'ferry-sec-swap-');
  const a = probeVm({ name: `${tag}a`, configPath: path.join(dir, `${tag}a`) });
  const b = probeVm({ name: `${tag}b`, configPath: path.join(dir, `${tag}b`) });
  const vm = await createVm(a.spec, a.create);
  const other = await createVm(b.spec, b.create);
  const victim = other.disks[0]!.path;
  return { dir, vm, other, victim, victimSum: await sha(victim), runDir: path.join(dir, 'run'), pools: testPools(dir) };
}

/** Makes `disk` a link to `target` for the duration of `during`, then puts the disk back. */
async function swappedDuring<T>(disk: string, target: string, during: () => Promise<T>): Promise<T> {
  const aside = `${disk}.aside`;
  await fsp.rename(disk, aside);
  await fsp.symlink(target, disk);
  try {
    return await during();
  } finally {
    await fsp.rm(disk, { force: true });
    await fsp.rename(aside, disk);
  }
}

const SWAP_START =
  "a disk swapped for a link to another VM's disk while QEMU opened it: the start is refused, the guest never ran";
test(SWAP_START, async (t) => {
  const { dir, vm, victim, victimSum, runDir } = await twoVms(t, 'sw1');
  const disk = vm.disks[0]!.path;
  let pid = 0;
  const spawn = QemuProcess.spawn.bind(QemuProcess);
  QemuProcess.spawn = (argv, o) =>
    swappedDuring(disk, victim, async () => {
      const p = await spawn(argv, o);
      pid = p.pid;
      t.after(() => p.kill()); // should the check ever let it through
      return p;
    });
  t.after(() => {
    QemuProcess.spawn = spawn;
  });
  await assert.rejects(
    startVm(vm, { runDir, accel: await testAccel(), pools: testPools(dir), host: 'host-a' }),
    refusedWith('E_PATH_SWAPPED', new RegExp(`QEMU opened ${disk} but it is not the file the agent checked`)),
  );
  assert.ok(pid > 0, 'QEMU was started (the race was won)');
  assert.equal(isQemuAlive(pid), false, 'and is gone');
  const serial = await fsp.readFile(runtimePaths(runDir).serialLog, 'utf8').catch(() => '');
  assert.equal(serial, '', 'the guest printed nothing: it never ran');
  assert.equal(await sha(victim), victimSum, "the other VM's disk is unchanged");
  assert.equal(fs.lstatSync(disk).isFile(), true);

  // Without the swap the same VM starts, and QEMU holds its own disk.
  QemuProcess.spawn = spawn;
  const proc = await startVm(vm, { runDir, accel: await testAccel(), pools: testPools(dir), host: 'host-a' });
  t.after(() => proc.kill());
  const argv = JSON.parse(await fsp.readFile(path.join(runDir, 'argv.json'), 'utf8')) as string[];
  await checkOpenedFiles(proc.pid, blockdevFiles(argv), testPools(dir), { vm: vm.name, host: 'host-a' });
  const st = await proc.qmp.execute('query-status');
  assert.equal(st.running, true, 'started paused, then run once its disks were checked');
  await proc.kill();
});

test("a stopped VM's disk daemon that opened a swapped disk is stopped before it copies anything", async (t) => {
  const { dir, vm, victim } = await twoVms(t, 'sw2');
  const disk = vm.disks[0]!.path;
  const copyDir = path.join(dir, 'copy-1');
  let pid = 0;
  const start = StorageDaemon.start.bind(StorageDaemon);
  StorageDaemon.start = (name, blockdevs, d, o) =>
    swappedDuring(disk, victim, async () => {
      const daemon = await start(name, blockdevs, d, o);
      pid = daemon.pid;
      t.after(() => daemon.kill()); // should the check ever let it through
      return daemon;
    });
  t.after(() => {
    StorageDaemon.start = start;
  });
  const open = (): Promise<StorageDaemon> =>
    openDisksForCopy(vm, [vm.disks[0]!.id], { dir: copyDir, chains: new Map(), pools: testPools(dir), host: 'host-a' });
  await assert.rejects(
    open(),
    refusedWith('E_PATH_SWAPPED', /QEMU opened .* but it is not the file the agent checked/),
  );
  assert.ok(pid > 0);
  assert.equal(isQemuAlive(pid), false, 'the daemon is gone');

  StorageDaemon.start = start;
  const daemon = await open();
  t.after(() => daemon.quit());
  assert.ok(isQemuAlive(daemon.pid), 'without the swap the daemon opens the disk');
  await daemon.quit();
});

test('an image QEMU adds while it runs (a storage move target) that is a link is dropped again, refused', async (t) => {
  const { dir, other } = await twoVms(t, 'sw3');
  const daemon = await StorageDaemon.start('sw3', [], path.join(dir, 'qemu'));
  t.after(() => daemon.quit());
  const target = path.join(dir, 'target.raw');
  await fsp.symlink(other.disks[0]!.path, target);
  const held = { pid: daemon.pid, pools: testPools(dir), vm: 'sw3a', host: 'host-a' };
  await assert.rejects(
    addImageNode(daemon.qmp, 'tgt', target, 'raw', false, { held }),
    refusedWith('E_PATH_LINK', /target\.raw: target\.raw is a symbolic link/),
  );
  const nodes = await daemon.qmp.execute('query-named-block-nodes', { flat: true });
  assert.deepEqual(
    nodes.map((n) => n['node-name']),
    [],
    'QEMU let go of the file',
  );
  // The file itself, made by the agent: added and kept.
  await fsp.rm(target);
  await fsp.writeFile(target, Buffer.alloc(1 << 20));
  await addImageNode(daemon.qmp, 'tgt', target, 'raw', false, { held });
  assert.equal((await daemon.qmp.execute('query-named-block-nodes', { flat: true })).length, 2);
});

const checkpointDeps = (proc: QemuProcess, runDir: string, pools: ReturnType<typeof testPools>) => ({
  proc,
  runDir,
  pools,
  host: 'host-a',
  startIncoming: () => Promise.reject(new Error('not used')),
  resumed: () => undefined,
  quit: () => Promise.resolve(),
});

const SWAP_OVERLAY =
  "a running VM's checkpoint overlay swapped for a link as QEMU opened it: no checkpoint, the guest runs on its disk";
test(SWAP_OVERLAY, async (t) => {
  const { vm, victim, victimSum, runDir, pools } = await twoVms(t, 'sw4');
  const proc = await startVm(vm, { runDir, accel: await testAccel(), pools, host: 'host-a' });
  t.after(() => proc.kill());
  let swapped = '';
  const proto = QmpClient.prototype;
  const execute = Object.getOwnPropertyDescriptor(proto, 'executeRaw')?.value as QmpClient['executeRaw'];
  // Between the agent's making of the overlay and QEMU's open of it: a link to the other disk.
  QmpClient.prototype.executeRaw = async function (this: QmpClient, command, args, opts) {
    const file = (args?.file as { filename?: string } | undefined)?.filename;
    if (command !== 'blockdev-add' || !file?.endsWith('.qcow2') || !file.includes('checkpoints')) {
      return execute.call(this, command, args, opts);
    }
    swapped = file;
    return swappedDuring(file, victim, () => execute.call(this, command, args, opts));
  };
  t.after(() => {
    QmpClient.prototype.executeRaw = execute;
  });
  const deps = checkpointDeps(proc, runDir, pools);
  await assert.rejects(
    takeCheckpoint(vm, 'c1', deps),
    refusedWith('E_PATH_SWAPPED', /QEMU opened .*checkpoints.* but it is not the file the agent checked/),
  );
  QmpClient.prototype.executeRaw = execute;
  assert.ok(swapped, 'the overlay was swapped while QEMU opened it');
  assert.equal(fs.existsSync(swapped), false, 'the overlay file is gone');
  assert.deepEqual((await listCheckpoints(vm)).checkpoints, [], 'no checkpoint');
  const nodes = await proc.qmp.execute('query-named-block-nodes', { flat: true });
  assert.deepEqual(
    nodes.filter((n) => n.file.includes('checkpoints') || n.file === victim),
    [],
    'QEMU holds neither the overlay nor the other disk',
  );
  assert.equal((await proc.qmp.execute('query-status')).running, true, 'the guest runs on');
  const log = runtimePaths(runDir).serialLog;
  const beats = parseSerial(await fsp.readFile(log, 'utf8')).heartbeats.length;
  await waitForFile(log, (s) => parseSerial(s).heartbeats.length > beats + 3, {
    timeoutMs: 60_000,
    what: 'heartbeats',
  });
  assert.equal(await sha(victim), victimSum, "the other VM's disk is unchanged");
  // Untouched, the same checkpoint is taken.
  await takeCheckpoint(vm, 'c1', deps);
  assert.deepEqual(
    (await listCheckpoints(vm)).checkpoints.map((c) => c.name),
    ['c1'],
  );
});

const SWAP_COMMIT =
  "a checkpoint's base disk swapped for a link as its removal commits into it: the commit writes the VM's own disk";
test(SWAP_COMMIT, async (t) => {
  const { vm, victim, victimSum, runDir, pools } = await twoVms(t, 'sw5');
  const base = vm.disks[0]!.path;
  const first = await startVm(vm, { runDir, accel: await testAccel(), pools, host: 'host-a' });
  t.after(() => first.kill());
  await takeCheckpoint(vm, 'c1', checkpointDeps(first, runDir, pools));
  await first.quit({ timeoutMs: 10_000 });
  // Started again as the agent starts it: the base disk is now a layer below the overlay.
  const chains = await checkDiskChains(vm, pools, 'host-a');
  assert.deepEqual(
    chains.get(vm.disks[0]!.id)?.map((c) => [c.path, c.writable ?? false]),
    [
      [vm.disks[0]!.path, false],
      [base, true],
    ],
    'the base disk is a writable layer',
  );
  const proc = await startVm(vm, { runDir, accel: await testAccel(), pools, host: 'host-a', chains });
  t.after(() => proc.kill());
  const log = runtimePaths(runDir).serialLog;
  await waitForFile(log, (s) => parseSerial(s).heartbeats.length > 2, { timeoutMs: 60_000, what: 'heartbeats' });
  let swapped = false;
  const proto = QmpClient.prototype;
  const execute = Object.getOwnPropertyDescriptor(proto, 'executeRaw')?.value as QmpClient['executeRaw'];
  // QEMU makes the commit's base writable as it takes the command: the base is a link right then.
  QmpClient.prototype.executeRaw = async function (this: QmpClient, command, args, opts) {
    if (command !== 'block-commit') return execute.call(this, command, args, opts);
    swapped = true;
    return swappedDuring(base, victim, () => execute.call(this, command, args, opts));
  };
  t.after(() => {
    QmpClient.prototype.executeRaw = execute;
  });
  await removeCheckpoint(vm, 'c1', checkpointDeps(proc, runDir, pools));
  QmpClient.prototype.executeRaw = execute;
  assert.ok(swapped, 'the base was a link while QEMU started the commit');
  assert.equal(await sha(victim), victimSum, "the other VM's disk is unchanged");
  assert.deepEqual((await listCheckpoints(vm)).checkpoints, [], 'no checkpoint');
  assert.equal(vm.disks[0]!.path, base, 'the VM runs on its base disk again');
  const nodes = await proc.qmp.execute('query-named-block-nodes', { flat: true });
  assert.ok(
    nodes.some((n) => n.file === base),
    'QEMU holds the base disk',
  );
  await checkOpenedFiles(proc.pid, [base], pools, { vm: vm.name, host: 'host-a' });
  const beats = parseSerial(await fsp.readFile(log, 'utf8')).heartbeats.length;
  await waitForFile(log, (s) => parseSerial(s).heartbeats.length > beats + 3, {
    timeoutMs: 60_000,
    what: 'heartbeats after the commit',
  });
  await proc.quit({ timeoutMs: 10_000 });
  assert.equal(await sha(victim), victimSum, "the other VM's disk is still unchanged");
  // Every write the guest acknowledged, before and after the commit, is on its base disk.
  const ack = parseSerial(await fsp.readFile(log, 'utf8')).highestAck;
  assert.ok(ack !== null && ack > 0, 'the guest acknowledged writes');
  const rep = await verifyDiskImage(base, { format: vm.disks[0]!.format as 'qcow2', highestAck: ack });
  assert.equal(rep.ok, true, rep.problems.join('; '));
});
