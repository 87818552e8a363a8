// QEMU's kernel, initrd and CD-ROM images are opened by the agent inside the pools, without links,
// and named /proc/self/fd/N for QEMU (src/vm/boot-files.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { openBootFiles } from '../../src/vm/boot-files.js';
import { parseVmSpec, newVmId, type VmSpec } from '../../src/vm/spec.js';
import type { PoolDef } from '../../src/storage/pools.js';
import { refusedWith, tempDir } from '../helpers.js';

function spec(folder: string, over: Record<string, unknown> = {}): VmSpec {
  return parseVmSpec({
    name: 'k1',
    id: newVmId(),
    memoryMiB: 128,
    cpus: 1,
    disks: [],
    boot: { kind: 'kernel', kernel: 'vmlinuz', initrd: 'initrd.img', append: '' },
    cdroms: [{ id: 'cd0', path: 'media.iso', role: 'media' }],
    configPath: folder,
    checkpointPath: folder,
    pagingPath: folder,
    ...over,
  });
}

async function layout(dir: string): Promise<{ pools: PoolDef[]; folder: string; secret: string }> {
  const folder = path.join(dir, 'pool', 'k1');
  await fsp.mkdir(folder, { recursive: true });
  for (const f of ['vmlinuz', 'initrd.img', 'media.iso']) await fsp.writeFile(path.join(folder, f), `${f} bytes`);
  const secret = path.join(dir, 'secret');
  await fsp.writeFile(secret, 'host only');
  return { pools: [{ name: 'local', kind: 'local', path: path.join(dir, 'pool') }], folder, secret };
}

test('the boot files are opened in the pool and named /proc/self/fd/3, 4, … in order', async (t) => {
  const { pools, folder } = await layout(await tempDir(t));
  const files = await openBootFiles(spec(folder), pools, 'host-a');
  try {
    assert.equal(files.nameOf(path.join(folder, 'vmlinuz')), '/proc/self/fd/3');
    assert.equal(files.nameOf(path.join(folder, 'initrd.img')), '/proc/self/fd/4');
    assert.equal(files.nameOf(path.join(folder, 'media.iso')), '/proc/self/fd/5');
    assert.equal(files.fds.length, 3);
    // Each descriptor is the file itself (what QEMU inherits as fd 3, 4, 5).
    assert.equal(fs.readlinkSync(`/proc/self/fd/${files.fds[1]}`), path.join(folder, 'initrd.img'));
    assert.throws(() => files.nameOf('/etc/shadow'), refusedWith('E_INTERNAL', /was not opened for QEMU/));
  } finally {
    await files.close();
  }
});

test('a boot file outside the pools, or reached by a link in the pool, is refused; nothing stays open', async (t) => {
  const { pools, folder, secret } = await layout(await tempDir(t));
  await assert.rejects(
    openBootFiles(
      spec(folder, { boot: { kind: 'kernel', kernel: 'vmlinuz', initrd: secret, append: '' } }),
      pools,
      'h',
    ),
    refusedWith('E_INVALID_INPUT', /the initrd of VM 'k1' '.*secret': it is outside every storage pool of host 'h'/),
  );
  for (const target of [secret, path.join(folder, 'vmlinuz')]) {
    await fsp.rm(path.join(folder, 'media.iso'), { force: true });
    await fsp.symlink(target, path.join(folder, 'media.iso'));
    await assert.rejects(
      openBootFiles(spec(folder), pools, 'h'),
      refusedWith('E_PATH_LINK', /Cannot open CD-ROM cd0 of VM 'k1' .*media\.iso is a symbolic link/),
    );
  }
  // Other unit tests run in this process at the same time: look for this VM's files, not a count.
  const open = fs.readdirSync('/proc/self/fd').flatMap((fd) => {
    try {
      return [fs.readlinkSync(`/proc/self/fd/${fd}`)];
    } catch {
      return []; // closed meanwhile
    }
  });
  assert.deepEqual(
    open.filter((f) => f.startsWith(folder)),
    [],
    'the kernel and initrd opened first were closed',
  );
});
