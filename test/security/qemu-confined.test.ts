// QEMU confined (issue #14): every QEMU runs with its seccomp sandbox on, and as the user of
// qemu.user (ferry-qemu, made by scripts/setup) it still boots, keeps acked records, saves
// and loads its memory through the agent's socket and opens images the agent makes, while a
// root-only file on the host stays out of its reach. Checked on the real process (/proc).
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
import { tempDir, testAccel, waitForFile } from '../helpers.js';

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
  const proc = await startVm(spec, { runDir, accel: await testAccel() });
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
  let proc = await startVm(spec, { runDir, accel });
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
  proc = await startVm(spec, { runDir, accel, incoming: true });
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
