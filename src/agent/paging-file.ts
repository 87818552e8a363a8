// The Smart Paging file of a VM on this host: created by the agent in the VM's paging folder
// (inside a usable storage pool), exclusively and never through a symbolic link, sized to the
// guest's RAM but sparse, and the QEMU user's when QEMU runs as one. Its name carries the host,
// so a file a crashed host left in a shared folder never blocks another host's.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { assertInUsablePool, type PoolDef } from '../storage/pools.js';
import { letQemuThrough, ownForQemu } from '../qemu/user.js';
import type { VmSpec } from '../vm/spec.js';

export function pagingFilePath(spec: Pick<VmSpec, 'name' | 'pagingPath'>, host: string): string {
  return path.join(spec.pagingPath, `${spec.name}.${host}.smartpaging`);
}

export async function createPagingFile(spec: VmSpec, host: string, pools: PoolDef[]): Promise<string> {
  await assertInUsablePool(pools, host, spec.pagingPath, `the paging folder of VM '${spec.name}'`);
  await fsp.mkdir(spec.pagingPath, { recursive: true });
  const file = pagingFilePath(spec, host);
  const flags = fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  const open = (): Promise<fsp.FileHandle> => fsp.open(file, flags, 0o600);
  let fh: fsp.FileHandle;
  try {
    fh = await open();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    // Only this host makes this name, and the VM does not run here: a crash's leftover.
    const st = await fsp.lstat(file);
    if (!st.isFile())
      throw new FerryError(
        'E_DEST_PATH',
        `Cannot back the memory of VM '${spec.name}' with ${file}: something that is not a file is there; remove it`,
        { context: { path: file } },
      );
    await fsp.rm(file);
    fh = await open();
  }
  try {
    await fh.truncate(spec.memoryMiB * 1024 * 1024);
  } finally {
    await fh.close();
  }
  await ownForQemu(file);
  await letQemuThrough(spec.pagingPath);
  return file;
}

export async function removePagingFile(file: string): Promise<void> {
  await fsp.rm(file, { force: true });
}
