import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  IMAGE_FORMATS,
  createImage,
  imageInfo,
  convertImage,
  checkImage,
  assertImageFormat,
} from '../../src/qemu/img.js';
import { tempDir } from '../helpers.js';

test('qemu-img: create, info, convert and check in all four formats', async (t) => {
  const dir = await tempDir(t);
  const size = 64 * 1024 * 1024;
  for (const fmt of IMAGE_FORMATS) {
    const p = path.join(dir, `d.${fmt}`);
    await createImage(p, fmt, size);
    const info = await imageInfo(p);
    assert.equal(info.format, fmt);
    assert.equal(info.virtualSizeBytes, size, `${fmt} keeps the exact size`);
    assert.equal((await checkImage(p, { format: fmt })).ok, true);
    for (const to of IMAGE_FORMATS) {
      const q = path.join(dir, `c-${fmt}.${to}`);
      await convertImage(p, q, { srcFormat: fmt, dstFormat: to });
      const qi = await imageInfo(q);
      assert.equal(qi.format, to);
      assert.equal(qi.virtualSizeBytes, size, `${fmt} → ${to} keeps the size`);
    }
  }
  assert.throws(() => assertImageFormat('qcow3'), /qcow3.*qcow2, raw, vhdx, vpc/);
  await assert.rejects(imageInfo(path.join(dir, 'none.qcow2')), /E_COMMAND_FAILED|No such file/);
});
