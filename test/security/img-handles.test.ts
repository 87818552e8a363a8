// qemu-img runs as root on files of pools that another host may write (issue #14, symlink races on
// shared pools). The agent opens each file itself without following links and hands qemu-img the
// descriptor (src/qemu/img-files.ts): an image swapped for a link after the agent's checks is
// refused, and one swapped while qemu-img runs is not what qemu-img reads or writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { copyImage, probeImage } from '../../src/vm/image.js';
import { chainFilename, commitHeld, convertHeld, rebaseHeld, withHeldFiles } from '../../src/qemu/img-files.js';
import { run, runWithFd } from '../../src/util/exec.js';
import { refusedWith, tempDir, testPools } from '../helpers.js';

const MiB = 1024 * 1024;

/** A secret of this host (as /etc/shadow would be), outside every pool. */
async function secretOutside(t: Parameters<typeof tempDir>[0]): Promise<{ file: string; bytes: Buffer }> {
  const dir = await tempDir(t, 'ferry-sec-host-');
  const file = path.join(dir, 'shadow');
  const bytes = Buffer.alloc(MiB, 'root:secret-hash:');
  await fsp.writeFile(file, bytes);
  return { file, bytes };
}

const pattern = (file: string, byte: number, off: number, len: number, fmt = 'qcow2') =>
  run('qemu-io', ['-f', fmt, '-c', `write -P ${byte} ${off} ${len}`, file]);
const readsAs = async (file: string, byte: number, off: number, len: number, fmt = 'qcow2') => {
  const { stdout } = await run('qemu-io', ['-r', '-f', fmt, '-c', `read -P ${byte} ${off} ${len}`, file]);
  return !/Pattern verification failed/.test(stdout);
};

test('an image swapped for a link to a host file after its checks: the copy is refused, nothing made', async (t) => {
  const dir = await tempDir(t, 'ferry-sec-img-');
  const secret = await secretOutside(t);
  const image = path.join(dir, 'upload.raw');
  await fsp.writeFile(image, Buffer.alloc(4 * MiB, 0x61));
  const pools = testPools(dir);
  const probed = await probeImage(image, { pools, host: 'host-a' });
  // The pool's other writer, between the agent's probe and the copy:
  await fsp.rename(image, `${image}.aside`);
  await fsp.symlink(secret.file, image);
  const dest = path.join(dir, 'vm1', 'disk0.qcow2');
  await fsp.mkdir(path.dirname(dest));
  await assert.rejects(
    copyImage(probed, dest, { format: 'qcow2', pools }),
    refusedWith('E_PATH_LINK', /upload\.raw: upload\.raw is a symbolic link/),
  );
  assert.equal(fs.existsSync(dest), false, 'no disk was made');
  assert.deepEqual(await fsp.readFile(secret.file), secret.bytes);

  // Put back, the same copy is made, and reads as the image.
  await fsp.rm(image);
  await fsp.rename(`${image}.aside`, image);
  await copyImage(probed, dest, { format: 'qcow2', pools });
  assert.ok(await readsAs(dest, 0x61, 0, 4 * MiB));
});

test('a disk copy leaves no link at its destination to write through: the destination must be new', async (t) => {
  const dir = await tempDir(t, 'ferry-sec-img-');
  const secret = await secretOutside(t);
  const image = path.join(dir, 'upload.raw');
  await fsp.writeFile(image, Buffer.alloc(MiB, 0x62));
  const pools = testPools(dir);
  const probed = await probeImage(image, { pools, host: 'host-a' });
  const dest = path.join(dir, 'disk0.raw');
  await fsp.symlink(secret.file, dest);
  await assert.rejects(
    copyImage(probed, dest, { format: 'raw', pools }),
    refusedWith('E_INVALID_INPUT', /disk0\.raw: it already exists/),
  );
  assert.deepEqual(await fsp.readFile(secret.file), secret.bytes, 'the host file was not written');
  assert.equal(fs.lstatSync(dest).isSymbolicLink(), true, "the other writer's link is left alone");
});

test("a stopped VM's checkpoint commit and rebase, a layer swapped for a link: refused, nothing changed", async (t) => {
  const dir = await tempDir(t, 'ferry-sec-img-');
  const pools = testPools(dir);
  const what = "an image of VM 'x'";
  const base = path.join(dir, 'base.qcow2');
  const top = path.join(dir, 'top.qcow2');
  const other = path.join(dir, 'other-vm.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(16 * MiB)]);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', other, String(16 * MiB)]);
  await pattern(base, 0x11, 0, 2 * MiB);
  await pattern(other, 0x77, 0, 2 * MiB);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  await pattern(top, 0x22, 0, MiB);
  const chain = (await probeImage(top, { pools, host: 'host-a' })).chain;
  const otherBytes = await fsp.readFile(other);

  // The base is a link to another VM's disk when the commit opens it.
  await fsp.rename(base, `${base}.aside`);
  await fsp.symlink(other, base);
  await assert.rejects(
    commitHeld(chain, { pools, what }),
    refusedWith('E_PATH_LINK', /base\.qcow2 is a symbolic link/),
  );
  // A safe rebase reads the old and the new backing (here the same base, a link now).
  await assert.rejects(
    rebaseHeld(chain, [{ path: base, format: 'qcow2' }], { pools, what }),
    refusedWith('E_PATH_LINK', /base\.qcow2 is a symbolic link/),
  );
  assert.deepEqual(await fsp.readFile(other), otherBytes, "the other VM's disk is unchanged");
  await fsp.rm(base);
  await fsp.rename(`${base}.aside`, base);

  // As checked, the commit writes the base, and a safe rebase keeps what the image shows.
  await commitHeld(chain, { pools, what });
  assert.ok(await readsAs(base, 0x22, 0, MiB), 'the data is in the base');
  assert.ok(await readsAs(base, 0x11, MiB, MiB));
  const lower = path.join(dir, 'lower.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', lower, String(16 * MiB)]);
  await rebaseHeld(chain, [{ path: lower, format: 'qcow2' }], { pools, what });
  const info = JSON.parse((await run('qemu-img', ['info', '--output=json', top])).stdout) as Record<string, unknown>;
  assert.equal(info['backing-filename'], lower, 'the header names the new backing by its path');
  assert.ok(await readsAs(top, 0x11, MiB, MiB), 'the old backing data was copied in');
  assert.deepEqual(await fsp.readFile(other), otherBytes);
});

test('a file swapped while qemu-img runs: qemu-img reads the file the agent opened', async (t) => {
  const dir = await tempDir(t, 'ferry-sec-img-');
  const secret = await secretOutside(t);
  const image = path.join(dir, 'disk.raw');
  await fsp.writeFile(image, Buffer.alloc(MiB, 0x63));
  const out = path.join(dir, 'out.raw');
  await withHeldFiles(testPools(dir), [image], 'a disk', async (nameOf, fds) => {
    assert.equal(nameOf(image), '/dev/fd/3');
    // After the agent's open, before qemu-img's:
    await fsp.rename(image, `${image}.aside`);
    await fsp.symlink(secret.file, image);
    const src = chainFilename([{ path: image, format: 'raw' }], nameOf);
    await runWithFd('qemu-img', ['convert', '-q', src, '-O', 'raw', out], fds);
  });
  assert.deepEqual(await fsp.readFile(out), Buffer.alloc(MiB, 0x63), 'the disk, not the host file');
});

test("a raw disk whose guest wrote a qcow2 header naming another VM's disk is copied as its raw bytes", async (t) => {
  const dir = await tempDir(t, 'ferry-sec-img-');
  const pools = testPools(dir);
  const other = path.join(dir, 'other-vm.raw');
  await fsp.writeFile(other, Buffer.alloc(4 * MiB, 0x77));
  // The guest's own bytes: a qcow2 header at sector 0 with the other disk as its backing.
  const disk = path.join(dir, 'disk0.raw');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', other, '-F', 'raw', disk, String(4 * MiB)]);
  const guessed = await probeImage(disk, { pools, host: 'host-a' });
  assert.equal(guessed.chain.length, 2, 'guessed, the format would follow the guest-written backing');
  const probed = await probeImage(disk, { pools, host: 'host-a', format: 'raw' });
  assert.deepEqual(
    probed.chain.map((c) => [c.path, c.format]),
    [[disk, 'raw']],
  );
  const dest = path.join(dir, 'copy.raw');
  const fh = await fsp.open(dest, 'wx');
  try {
    await convertHeld(
      probed.chain,
      fh.fd,
      { path: dest, format: 'raw', sizeBytes: probed.virtualSizeBytes },
      {
        pools,
        what: 'a disk',
      },
    );
  } finally {
    await fh.close();
  }
  const src = await fsp.readFile(disk);
  const copy = await fsp.readFile(dest);
  assert.deepEqual(copy.subarray(0, src.length), src, 'the raw bytes, header and all');
  assert.equal(copy.includes(Buffer.alloc(65536, 0x77)), false, "none of the other VM's data");
});
