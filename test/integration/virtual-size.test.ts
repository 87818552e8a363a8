// `vm show`/`vm list` read a disk's virtual size from the image (raw, qcow2) instead of a
// qemu-img process per disk: the answer must be qemu-img's, nothing is opened through a link or
// as a device, and anything unusual goes to qemu-img or fails at once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { IMAGE_FORMATS, createImage, imageInfo } from '../../src/qemu/img.js';
import { virtualSize } from '../../src/qemu/virtual-size.js';
import { run } from '../../src/util/exec.js';
import { tempDir } from '../helpers.js';

test('virtual size: the same as qemu-img for every format, sizes and a resize', async (t) => {
  const dir = await tempDir(t);
  const o = { roots: [dir] };
  for (const fmt of IMAGE_FORMATS) {
    for (const size of [1024 * 1024, 3 * 1024 ** 3 + 512 * 1024]) {
      const p = path.join(dir, `d-${size}.${fmt}`);
      await createImage(p, fmt, size);
      assert.equal(await virtualSize(p, fmt, o), (await imageInfo(p)).virtualSizeBytes, `${fmt} ${size}`);
    }
  }
  // A raw file whose length is no whole sector: QEMU rounds it up.
  const odd = path.join(dir, 'odd.raw');
  await fsp.writeFile(odd, Buffer.alloc(1000, 1));
  assert.equal(await virtualSize(odd, 'raw', o), (await imageInfo(odd)).virtualSizeBytes);
  assert.equal(await virtualSize(odd, 'raw', o), 1024);
  const q = path.join(dir, 'grow.qcow2');
  await createImage(q, 'qcow2', 64 * 1024 ** 2);
  await run('qemu-img', ['resize', '-q', '-f', 'qcow2', q, String(10 * 1024 ** 3)]);
  assert.equal(await virtualSize(q, 'qcow2', o), 10 * 1024 ** 3);
  // A qcow2 with a backing file and the v2 header (compat=0.10).
  const v2 = path.join(dir, 'v2.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', q, '-F', 'qcow2', v2]);
  assert.equal(await virtualSize(v2, 'qcow2', o), 10 * 1024 ** 3);
  // In no pool: qemu-img answers, as before.
  assert.equal(await virtualSize(v2, 'qcow2', { roots: [path.join(dir, 'elsewhere')] }), 10 * 1024 ** 3);
});

test('virtual size: links, FIFOs and folders fail at once; a fake qcow2 goes to qemu-img', async (t) => {
  const dir = await tempDir(t);
  const o = { roots: [dir], timeoutMs: 5000 };
  // Named qcow2 but raw bytes: no magic, so qemu-img decides (and refuses the format).
  const fake = path.join(dir, 'fake.qcow2');
  await fsp.writeFile(fake, Buffer.alloc(4096, 7));
  await assert.rejects(virtualSize(fake, 'qcow2', o), /qcow2|E_COMMAND_FAILED/);
  // A link to a real image, or to a device node: not followed (a VM's start refuses it too).
  const real = path.join(dir, 'real.qcow2');
  await createImage(real, 'qcow2', 1024 * 1024);
  for (const target of [real, '/dev/null']) {
    const link = path.join(dir, `link-${path.basename(target)}`);
    await fsp.symlink(target, link);
    await assert.rejects(virtualSize(link, 'qcow2', o), /symbolic link/);
  }
  // A folder in the path that is a link: refused beneath the pool.
  await fsp.mkdir(path.join(dir, 'sub'));
  await fsp.copyFile(real, path.join(dir, 'sub', 'd.qcow2'));
  await fsp.symlink(path.join(dir, 'sub'), path.join(dir, 'via'));
  await assert.rejects(virtualSize(path.join(dir, 'via', 'd.qcow2'), 'qcow2', o), /link/);
  assert.equal(await virtualSize(path.join(dir, 'sub', 'd.qcow2'), 'qcow2', o), 1024 * 1024);
  // A raw "disk" that is a folder, one that is missing, and a FIFO (qemu-img would wait on it).
  await assert.rejects(virtualSize(dir, 'raw', o), /not a file or block device/);
  await assert.rejects(virtualSize(path.join(dir, 'none.raw'), 'raw', o), /ENOENT/);
  const fifo = path.join(dir, 'fifo.raw');
  await run('mkfifo', [fifo]);
  const t0 = Date.now();
  await assert.rejects(virtualSize(fifo, 'raw', o), /not a file or block device/);
  assert.ok(Date.now() - t0 < 2000);
});
