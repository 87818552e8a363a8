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
import { tempDir } from '../helpers.js';

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
  const { spec, made, attached } = await vmWithAttached(await tempDir(t));
  await removeVm(spec, { deleteDisks: true });
  assert.equal(fs.existsSync(made), false, 'the image the VM made is gone');
  assert.equal(fs.existsSync(configFile(spec.configPath)), false, 'vm.json is gone');
  assert.equal(await fsp.readFile(attached, 'utf8'), "the administrator's data", 'the attached image stays');
});

test('vm rm --keep-disks keeps both; --delete-disks deletes the attached image too', async (t) => {
  const dir = await tempDir(t);
  const a = await vmWithAttached(dir);
  await removeVm(a.spec, { deleteDisks: false });
  assert.ok(fs.existsSync(a.made) && fs.existsSync(a.attached), '--keep-disks keeps every image');
  const b = await vmWithAttached(path.join(dir, 'again'));
  await removeVm(b.spec, { deleteDisks: true, deleteExternal: true });
  assert.equal(fs.existsSync(b.made) || fs.existsSync(b.attached), false, '--delete-disks deletes both');
});
