// The mirror onto an image made for it (issue 17 item 2): a disk with no backing image is
// mirrored with sync 'top', so QEMU 7.2 sends what the disk holds instead of first writing
// zeroes over the whole target; the copy is the same as the source. A disk over a backing
// image keeps 'full' (the chain flattened into the target).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { QmpClient } from '../../src/qemu/qmp.js';
import { QEMU_BINARY } from '../../src/qemu/process.js';
import { createImage } from '../../src/qemu/img.js';
import { diskRoot, finishMirrors, startMirror, syncOntoNew, waitMirrorsReady } from '../../src/migration/block.js';
import type { MirrorSpec } from '../../src/migration/block.js';
import type { ImageFormat } from '../../src/api/common.js';
import { tempDir } from '../helpers.js';

const run = promisify(execFile);
const MiB = 1048576;
const SIZE = 2048 * MiB;

/** A paused QEMU whose disk `disk0` is `image` (its backing, if any, opened from its header). */
async function qemuWith(
  t: { after: (fn: () => void) => void },
  dir: string,
  image: string,
  format: string,
): Promise<QmpClient> {
  const sock = path.join(dir, `${path.basename(image)}.qmp`);
  const proc: ChildProcess = spawn(
    QEMU_BINARY,
    [
      ...['-nodefaults', '-display', 'none', '-machine', 'pc-i440fx-7.2', '-accel', 'tcg', '-m', '32M', '-S'],
      ...['-qmp', `unix:${sock},server=on,wait=off`],
      ...['-blockdev', JSON.stringify({ driver: 'file', filename: image, 'node-name': 'src-file' })],
      ...['-blockdev', JSON.stringify({ driver: format, file: 'src-file', 'node-name': 'src' })],
      ...['-device', 'ide-hd,drive=src,id=disk0'],
    ],
    { stdio: 'ignore' },
  );
  t.after(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  });
  const qmp = await QmpClient.connect(sock, { vm: 'mirror-sync' });
  t.after(() => qmp.close());
  return qmp;
}

/** Mirrors disk0 into a new image of `format` with `sync`; returns the job's length (bytes it went through). */
async function mirrorInto(qmp: QmpClient, target: string, format: ImageFormat, sync: 'full' | 'top'): Promise<number> {
  await createImage(target, format, SIZE);
  await qmp.execute('blockdev-add', { driver: 'file', filename: target, 'node-name': 'dst-file' });
  await qmp.execute('blockdev-add', { driver: format, file: 'dst-file', 'node-name': 'dst' });
  const root = await diskRoot(qmp, 'disk0');
  const m: MirrorSpec = { jobId: 'copy-disk0', diskId: 'disk0', device: root.node, target: 'dst', sync };
  await startMirror(qmp, m, undefined);
  let len = 0;
  await waitMirrorsReady(qmp, [m], (ps) => (len = ps[0]?.total ?? 0), { timeoutMs: 120_000 });
  await finishMirrors(qmp, [m], false);
  await qmp.execute('blockdev-del', { 'node-name': 'dst' });
  await qmp.execute('blockdev-del', { 'node-name': 'dst-file' });
  return len;
}

test("a sparse qcow2 disk with no backing: sync 'top' goes through its data only, the copy the same", async (t) => {
  const dir = await tempDir(t);
  const src = path.join(dir, 'src.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', src, String(SIZE)]);
  await run('qemu-io', [
    '-f',
    'qcow2',
    '-c',
    `write -P 0x5a ${1024 * MiB} ${8 * MiB}`,
    '-c',
    'write -P 0x11 0 1M',
    src,
  ]);
  const qmp = await qemuWith(t, dir, src, 'qcow2');
  const root = await diskRoot(qmp, 'disk0');
  assert.equal(root.backingDepth, 0);
  assert.equal(syncOntoNew(root.backingDepth, 'qcow2'), 'top');
  const top = await mirrorInto(qmp, path.join(dir, 'top.qcow2'), 'qcow2', 'top');
  const full = await mirrorInto(qmp, path.join(dir, 'full.qcow2'), 'qcow2', 'full');
  process.stderr.write(`mirror of 2 GiB holding 9 MiB: top went through ${top / MiB} MiB, full ${full / MiB} MiB\n`);
  assert.ok(top <= 16 * MiB, `top went through the data only (${top / MiB} MiB)`);
  assert.ok(full >= SIZE, `full went through the whole disk (${full / MiB} MiB)`);
  await qmp.execute('quit');
  for (const copy of ['top.qcow2', 'full.qcow2'])
    await run('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', src, path.join(dir, copy)]);
});

test("a raw disk: sync 'top' copies it whole, holes as zeroes, the same as the source", async (t) => {
  const dir = await tempDir(t);
  const src = path.join(dir, 'src.raw');
  await run('qemu-img', ['create', '-q', '-f', 'raw', src, String(SIZE)]);
  await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x77 ${512 * MiB} 4M`, src]);
  const qmp = await qemuWith(t, dir, src, 'raw');
  const root = await diskRoot(qmp, 'disk0');
  assert.equal(syncOntoNew(root.backingDepth, 'raw'), 'top');
  await mirrorInto(qmp, path.join(dir, 'top.raw'), 'raw', 'top');
  await qmp.execute('quit');
  await run('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', src, path.join(dir, 'top.raw')]);
});

test("a disk over a backing image, or a target format not known to read as zeros: 'full'", async (t) => {
  const dir = await tempDir(t);
  const base = path.join(dir, 'base.qcow2');
  const top = path.join(dir, 'top.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(SIZE)]);
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 0 2M', base]);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x44 ${64 * MiB} 1M`, top]);
  const qmp = await qemuWith(t, dir, top, 'qcow2');
  const root = await diskRoot(qmp, 'disk0');
  assert.equal(root.backingDepth, 1);
  assert.equal(syncOntoNew(root.backingDepth, 'qcow2'), 'full');
  await mirrorInto(qmp, path.join(dir, 'flat.qcow2'), 'qcow2', 'full');
  await qmp.execute('quit');
  // The flattened copy holds the base's data and the top's.
  await run('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', top, path.join(dir, 'flat.qcow2')]);
  assert.equal(syncOntoNew(0, 'vhdx'), 'full');
  assert.equal(syncOntoNew(null, 'qcow2'), 'full');
});
