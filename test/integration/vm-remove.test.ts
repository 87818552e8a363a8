// `vm rm` (issue 18.6): removing a VM deletes the disk images it made and keeps the ones it did
// not make (attached with --attach, imported in place) unless asked; on real files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { newVmId, parseVmSpec } from '../../src/vm/spec.js';
import { configFile, saveVm } from '../../src/vm/folder.js';
import { removeVm } from '../../src/vm/lifecycle.js';
import type { FerryError } from '../../src/errors.js';
import { tempDir, testPools } from '../helpers.js';

async function vmWithAttached(
  dir: string,
): Promise<{ spec: ReturnType<typeof parseVmSpec>; made: string; attached: string }> {
  const folder = path.join(dir, 'web1');
  const made = path.join(folder, 'disk0.qcow2');
  const attached = path.join(dir, 'images', 'data.qcow2');
  await fsp.mkdir(path.dirname(attached), { recursive: true });
  await fsp.mkdir(folder, { recursive: true });
  await fsp.writeFile(made, 'made by Ferry');
  await fsp.writeFile(attached, "the administrator's data");
  const spec = parseVmSpec({
    name: 'web1',
    id: newVmId(),
    memoryMiB: 64,
    cpus: 1,
    disks: [
      { id: 'disk0', path: made, format: 'qcow2' },
      { id: 'disk1', path: attached, format: 'qcow2', external: true },
    ],
    boot: { kind: 'disk' },
    configPath: folder,
    checkpointPath: folder,
    pagingPath: folder,
  });
  await saveVm(spec);
  return { spec, made, attached };
}

test('vm rm (the default: deleteDisks) deletes the image the VM made and keeps the attached one', async (t) => {
  const dir = await tempDir(t);
  const { spec, made, attached } = await vmWithAttached(dir);
  await removeVm(spec, { deleteDisks: true, pools: testPools(dir) });
  assert.equal(fs.existsSync(made), false, 'the image the VM made is gone');
  assert.equal(fs.existsSync(configFile(spec.configPath)), false, 'vm.json is gone');
  assert.equal(await fsp.readFile(attached, 'utf8'), "the administrator's data", 'the attached image stays');
});

test('vm rm --keep-disks keeps both; --delete-disks deletes the attached image too', async (t) => {
  const dir = await tempDir(t);
  const a = await vmWithAttached(dir);
  await removeVm(a.spec, { deleteDisks: false, pools: testPools(dir) });
  assert.ok(fs.existsSync(a.made) && fs.existsSync(a.attached), '--keep-disks keeps every image');
  const b = await vmWithAttached(path.join(dir, 'again'));
  await removeVm(b.spec, { deleteDisks: true, deleteExternal: true, pools: testPools(dir) });
  assert.equal(fs.existsSync(b.made) || fs.existsSync(b.attached), false, '--delete-disks deletes both');
});

test('vm rm follows no link planted in the pool: a VM folder swapped for a link keeps the linked files', async (t) => {
  const dir = await tempDir(t);
  const pool = path.join(dir, 'pool');
  const host = path.join(dir, 'host-files'); // stands for a folder of the host outside every pool
  await fsp.mkdir(host, { recursive: true });
  await fsp.writeFile(path.join(host, 'disk0.qcow2'), 'a file of the host');
  const { spec } = await vmWithAttached(pool);
  // A host that writes the shared pool replaces the VM's folder by a link after the checks.
  await fsp.rm(spec.configPath, { recursive: true });
  await fsp.symlink(host, spec.configPath);
  await assert.rejects(removeVm(spec, { deleteDisks: true, pools: testPools(pool) }), (e: FerryError) => {
    assert.equal(e.code, 'E_PATH_LINK');
    assert.match(e.message, /web1 is a symbolic link/);
    return true;
  });
  assert.equal(await fsp.readFile(path.join(host, 'disk0.qcow2'), 'utf8'), 'a file of the host');
});
