// `vm show`/`vm list` read a disk's virtual size from the image (raw, qcow2) instead of a
// qemu-img process per disk: the answer must be qemu-img's, and anything unusual goes to it.
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
  for (const fmt of IMAGE_FORMATS) {
    for (const size of [1024 * 1024, 3 * 1024 ** 3 + 512 * 1024]) {
      const p = path.join(dir, `d-${size}.${fmt}`);
      await createImage(p, fmt, size);
      assert.equal(await virtualSize(p, fmt), (await imageInfo(p)).virtualSizeBytes, `${fmt} ${size}`);
    }
  }
  const q = path.join(dir, 'grow.qcow2');
  await createImage(q, 'qcow2', 64 * 1024 ** 2);
  await run('qemu-img', ['resize', '-q', '-f', 'qcow2', q, String(10 * 1024 ** 3)]);
  assert.equal(await virtualSize(q, 'qcow2'), 10 * 1024 ** 3);
  // A qcow2 with a backing file and the v2 header (compat=0.10).
  const v2 = path.join(dir, 'v2.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', q, '-F', 'qcow2', v2]);
  assert.equal(await virtualSize(v2, 'qcow2'), 10 * 1024 ** 3);
});

test('virtual size: a file that is not what its format says goes to qemu-img, which refuses it', async (t) => {
  const dir = await tempDir(t);
  // Named qcow2 but raw bytes: no magic, so qemu-img decides (and refuses the format).
  const fake = path.join(dir, 'fake.qcow2');
  await fsp.writeFile(fake, Buffer.alloc(4096, 7));
  await assert.rejects(virtualSize(fake, 'qcow2'), /qcow2|Image is not in qcow2 format|E_COMMAND_FAILED/);
  // A raw "disk" that is a folder, and one that is missing.
  await assert.rejects(virtualSize(dir, 'raw'));
  await assert.rejects(virtualSize(path.join(dir, 'none.raw'), 'raw'));
  // A FIFO must not hang the view (qemu-img would wait on it until its timeout).
  const fifo = path.join(dir, 'fifo.raw');
  await run('mkfifo', [fifo]);
  const t0 = Date.now();
  await assert.rejects(virtualSize(fifo, 'raw', { timeoutMs: 5000 }), /not a file or block device/);
  assert.ok(Date.now() - t0 < 2000);
});
