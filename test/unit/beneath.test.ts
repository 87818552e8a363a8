// Changes inside a pool go through handles opened without links below the pool's root.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { unlinkBeneath, withBeneath } from '../../src/storage/beneath.js';
import { refusedWith, tempDir } from '../helpers.js';

async function layout(dir: string): Promise<{ pool: string; outside: string; alias: string }> {
  const pool = path.join(dir, 'pool');
  const outside = path.join(dir, 'outside');
  await fsp.mkdir(path.join(pool, 'vm1'), { recursive: true });
  await fsp.mkdir(outside);
  await fsp.writeFile(path.join(pool, 'vm1', 'disk.img'), 'guest');
  await fsp.writeFile(path.join(outside, 'secret'), 'host');
  // The pool's own path may be a link (the admin made it): only links below it are refused.
  const alias = path.join(dir, 'pool-alias');
  await fsp.symlink(pool, alias);
  return { pool, outside, alias };
}

test('a file inside the pool is reached through its handle, also by the pool path given as a link', async (t) => {
  const { pool, alias } = await layout(await tempDir(t));
  const read = (h: string): Promise<string> => fsp.readFile(h, 'utf8');
  assert.equal(await withBeneath([alias], path.join(alias, 'vm1', 'disk.img'), 'file', 'disk', read), 'guest');
  assert.equal(await withBeneath([alias], path.join(pool, 'vm1', 'disk.img'), 'file', 'disk', read), 'guest');
  await withBeneath([pool], path.join(pool, 'vm1'), 'dir', 'folder', async (h) => {
    await fsp.chmod(h, 0o711);
  });
  assert.equal(fs.statSync(path.join(pool, 'vm1')).mode & 0o777, 0o711);
});

test('a link as the file, or as a folder on the way, is refused and nothing outside changes', async (t) => {
  const { pool, outside } = await layout(await tempDir(t));
  await fsp.symlink(path.join(outside, 'secret'), path.join(pool, 'vm1', 'link.img'));
  await fsp.symlink(outside, path.join(pool, 'vm2'));
  const chmod = (h: string): Promise<void> => fsp.chmod(h, 0o666);
  await assert.rejects(
    withBeneath([pool], path.join(pool, 'vm1', 'link.img'), 'file', 'disk', chmod),
    refusedWith('E_PATH_LINK', /link\.img is a symbolic link/),
  );
  await assert.rejects(
    withBeneath([pool], path.join(pool, 'vm2', 'secret'), 'file', 'disk', chmod),
    refusedWith('E_PATH_LINK', /vm2 is a symbolic link/),
  );
  await assert.rejects(
    withBeneath([pool], path.join(outside, 'secret'), 'file', 'disk', chmod),
    refusedWith('E_PATH_LINK', /not inside a storage pool/),
  );
  await assert.rejects(
    withBeneath([pool], path.join(pool, 'vm1'), 'file', 'disk', chmod),
    refusedWith('E_PATH_LINK', /not a regular file/),
  );
  assert.notEqual(fs.statSync(path.join(outside, 'secret')).mode & 0o777, 0o666);
});

test('unlinkBeneath deletes through the folder handle; a missing file or folder is no error', async (t) => {
  const { pool, outside } = await layout(await tempDir(t));
  await fsp.symlink(outside, path.join(pool, 'vm2'));
  await unlinkBeneath([pool], path.join(pool, 'vm1', 'disk.img'), 'disk');
  assert.equal(fs.existsSync(path.join(pool, 'vm1', 'disk.img')), false);
  await unlinkBeneath([pool], path.join(pool, 'vm1', 'disk.img'), 'disk');
  await unlinkBeneath([pool], path.join(pool, 'gone', 'disk.img'), 'disk');
  await assert.rejects(
    unlinkBeneath([pool], path.join(pool, 'vm2', 'secret'), 'disk'),
    refusedWith('E_PATH_LINK', /vm2/),
  );
  assert.equal(await fsp.readFile(path.join(outside, 'secret'), 'utf8'), 'host');
});
