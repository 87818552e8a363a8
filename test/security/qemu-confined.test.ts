// QEMU confined (issue #14): every QEMU runs with its seccomp sandbox on, and as the user of
// qemu.user (ferry-qemu, made by scripts/setup) it still boots, keeps acked records, saves
// and loads its memory through the agent's socket and opens images the agent makes, while a
// root-only file on the host stays out of its reach. In a lab (whose hosts run QEMU as
// ferry-qemu, as installed hosts do) the same holds after a start, a live move and a
// shared-nothing move. Checked on the real processes (/proc).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { createVm, startVm, stopVm, runtimePaths } from '../../src/vm/lifecycle.js';
import { probeVm } from '../../src/vm/guests.js';
import { SANDBOX } from '../../src/qemu/sandbox.js';
import { lookupQemuUser, setQemuUser } from '../../src/qemu/user.js';
import { createImage } from '../../src/qemu/img.js';
import { saveMemory, loadMemory } from '../../src/checkpoint/memory.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { run } from '../../src/util/exec.js';
import { tempDir, testAccel, waitForFile, testPools } from '../helpers.js';
import { ferryOk } from '../e2e/cli.js';
import { hostData, serialLog, useLab, waitProbe } from '../e2e/lab.js';
import { hostQemuPids } from '../../src/lab/lab.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

const L = useLab(2);

/** The fields of /proc/PID/status this test reads. */
function status(pid: number): { uids: number[]; gids: number[]; seccomp: number } {
  const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): string => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(text)?.[1] ?? '';
  return {
    uids: field('Uid').split(/\s+/).map(Number),
    gids: field('Gid').split(/\s+/).map(Number),
    seccomp: Number(field('Seccomp')),
  };
}

function cmdline(pid: number): string[] {
  return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
}

const beats = (log: string, n: number) => (s: string) =>
  parseSerial(s).heartbeats.length >= n && parseSerial(s).acks.length >= 5;

test('QEMU runs with its seccomp sandbox on (filter mode), as root while qemu.user is not set', async (t) => {
  setQemuUser(null);
  const dir = await tempDir(t);
  const g = probeVm({ name: 'sbx1', configPath: path.join(dir, 'sbx1') });
  const spec = await createVm(g.spec, g.create);
  const runDir = path.join(dir, 'run');
  const proc = await startVm(spec, { runDir, accel: await testAccel(), pools: testPools(dir) });
  t.after(() => proc.kill());
  const argv = cmdline(proc.pid);
  assert.equal(argv[argv.indexOf('-sandbox') + 1], SANDBOX);
  assert.equal(status(proc.pid).seccomp, 2, 'a seccomp filter is installed');
  const log = runtimePaths(runDir).serialLog;
  await waitForFile(log, beats(log, 10), { timeoutMs: 60_000, what: 'heartbeats' });
  await proc.quit();
});

test('QEMU runs as ferry-qemu: boots, saves and loads memory, opens new images, cannot read root files', async (t) => {
  const u = await lookupQemuUser('ferry-qemu');
  assert.ok(u, 'user ferry-qemu exists (scripts/setup makes it)');
  setQemuUser(u);
  t.after(() => setQemuUser(null));
  const dir = await tempDir(t);
  // mkdtemp makes the folder 0700: QEMU's user must be able to pass through it.
  await fsp.chmod(dir, 0o711);
  const g = probeVm({ name: 'sbx2', configPath: path.join(dir, 'sbx2') });
  const spec = await createVm(g.spec, g.create);
  const runDir = path.join(dir, 'run');
  const accel = await testAccel();
  let proc = await startVm(spec, { runDir, accel, pools: testPools(dir) });
  t.after(() => proc.kill());

  const st = status(proc.pid);
  assert.deepEqual(st.uids, [u.uid, u.uid, u.uid, u.uid], 'real, effective, saved and fs uid are ferry-qemu');
  assert.deepEqual(st.gids, [u.gid, u.gid, u.gid, u.gid]);
  assert.equal(st.seccomp, 2);
  assert.equal(cmdline(proc.pid)[0], 'qemu-system-x86_64', 'the spawned pid is QEMU itself');
  const ps = (await run('ps', ['-o', 'user=', '-p', String(proc.pid)])).stdout.trim();
  assert.equal(ps, 'ferry-qemu', 'ps shows the user');
  assert.equal((await fsp.stat(spec.disks[0]!.path)).uid, u.uid, "the VM's disk is the user's");

  const log = runtimePaths(runDir).serialLog;
  await waitForFile(log, beats(log, 10), { timeoutMs: 60_000, what: 'heartbeats' });

  // A file only root may read: QEMU (its user) is refused, whatever a guest or a QMP caller asks.
  const secret = path.join(dir, 'secret.raw');
  await fsp.writeFile(secret, Buffer.alloc(4096), { mode: 0o600 });
  await assert.rejects(
    proc.qmp.execute('blockdev-add', { driver: 'file', filename: secret, 'node-name': 'steal', 'read-only': true }),
    /Permission denied/,
  );
  // An image the agent makes (a mirror target, a checkpoint overlay) is QEMU's to open.
  const made = path.join(spec.configPath, 'new.qcow2');
  await createImage(made, 'qcow2', 1024 * 1024);
  await proc.qmp.execute('blockdev-add', { driver: 'file', filename: made, 'node-name': 'new-file' });
  await proc.qmp.execute('blockdev-add', { driver: 'qcow2', file: 'new-file', 'node-name': 'new' });
  await proc.qmp.execute('blockdev-del', { 'node-name': 'new' });
  await proc.qmp.execute('blockdev-del', { 'node-name': 'new-file' });

  // Memory through the agent's socket (QEMU connects as its user), then into a fresh QEMU.
  await proc.qmp.execute('stop');
  const mem = path.join(spec.configPath, 'state.mem');
  await saveMemory(proc.qmp, mem, path.join(runDir, 'checkpoint.sock'), { timeoutMs: 120_000 });
  const before = parseSerial(await fsp.readFile(log, 'utf8')).heartbeats.length;
  await proc.kill();
  proc = await startVm(spec, { runDir, accel, incoming: true, pools: testPools(dir) });
  assert.equal(status(proc.pid).uids[0], u.uid);
  await loadMemory(proc.qmp, mem, path.join(runDir, 'checkpoint.sock'), { timeoutMs: 120_000 });
  await proc.qmp.execute('cont');
  await waitForFile(log, beats(log, before + 10), { timeoutMs: 60_000, what: 'heartbeats after the load' });

  const stopped = await stopVm(proc, { timeoutMs: 30_000 });
  assert.equal(stopped.graceful, true);
  const serial = parseSerial(await fsp.readFile(log, 'utf8'));
  const report = await verifyDiskImage(spec.disks[0]!.path, { format: 'qcow2', highestAck: serial.highestAck! });
  assert.equal(report.ok, true, report.problems.join('; '));
});

test('in a lab, QEMU runs as ferry-qemu, sandboxed, after a start, a live and a shared-nothing move', async () => {
  const u = await lookupQemuUser('ferry-qemu');
  assert.ok(u, 'user ferry-qemu exists (scripts/setup makes it)');
  assert.notEqual(u.uid, 0);
  const show = (name: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });
  /** The VM's one QEMU is on `host` (none on the other), unprivileged and sandboxed; its disks are the user's. */
  const assertConfined = async (vm: VmView, when: string): Promise<void> => {
    for (const h of L.status.hosts) {
      const pids = await hostQemuPids(hostData(L, h.name));
      assert.equal(pids.length, h.name === vm.host ? 1 : 0, `${when}: QEMUs on ${h.name}`);
      for (const pid of pids) {
        const st = status(pid);
        assert.deepEqual(st.uids, [u.uid, u.uid, u.uid, u.uid], `${when}: every uid of QEMU ${pid} is ferry-qemu`);
        assert.equal(st.seccomp, 2, `${when}: a seccomp filter is installed`);
        const argv = cmdline(pid);
        assert.equal(argv[argv.indexOf('-sandbox') + 1], SANDBOX, `${when}: -sandbox ${SANDBOX}`);
        const ps = (await run('ps', ['-o', 'user:32=,args=', '-p', String(pid)])).stdout.trim();
        assert.match(ps, new RegExp(`^ferry-qemu\\s.*-sandbox ${SANDBOX}`), `${when}: ps shows it`);
      }
    }
    for (const d of vm.disks) assert.equal((await fsp.stat(d.path)).uid, u.uid, `${when}: ${d.path} is the user's`);
  };

  let vm = await ferryOk<VmView>(
    ['vm', 'new', 'cf1', '--host', 'host-a', '--guest', 'probe', '--path', path.join(L.lab, 'shared', 'cf1')].concat([
      '--start',
      '--json',
    ]),
    { lab: L.lab },
  );
  await waitProbe(L, vm, 20);
  await assertConfined(vm, 'after the start');

  const live = await ferryOk<MigrationRecord>(['move-vm', 'cf1', '--to', 'host-b', '--json'], { lab: L.lab });
  assert.equal(live.state, 'completed', JSON.stringify(live.error));
  assert.equal(live.kind, 'live');
  vm = await show('cf1');
  assert.equal(vm.host, 'host-b');
  await waitProbe(L, vm, 10);
  await assertConfined(vm, 'after the live move');

  const target = path.join(hostData(L, 'host-a'), 'pools', 'local', 'cf1');
  const sn = await ferryOk<MigrationRecord>(
    ['move-vm', 'cf1', '--to', 'host-a', '--include-storage', '--storage-path', target, '--json'],
    { lab: L.lab },
  );
  assert.equal(sn.state, 'completed', JSON.stringify(sn.error));
  assert.equal(sn.kind, 'shared-nothing');
  vm = await show('cf1');
  assert.equal(vm.host, 'host-a');
  assert.equal(vm.disks[0]!.path, path.join(target, 'data.qcow2'));
  await waitProbe(L, vm, 10);
  await assertConfined(vm, 'after the shared-nothing move');

  // The guest's records: every one it acknowledged, on any host, is on its disk.
  await ferryOk(['vm', 'stop', 'cf1'], { lab: L.lab });
  const logs = await Promise.all(
    L.status.hosts.map((h) => fsp.readFile(serialLog(L, h.name, vm.id), 'utf8').catch(() => '')),
  );
  const ack = Math.max(...logs.map((t) => parseSerial(t).highestAck ?? 0));
  assert.ok(ack > 0, 'the guest acknowledged records');
  const report = await verifyDiskImage(vm.disks[0]!.path, { format: 'qcow2', highestAck: ack });
  assert.equal(report.ok, true, report.problems.join('; '));
  await ferryOk(['vm', 'rm', 'cf1'], { lab: L.lab });
});
