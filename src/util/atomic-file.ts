// Replaces a file atomically (temp file, then rename) where others may write the folder: a
// shared pool's VM folder or grants file. The temp file has a random name and is created
// exclusively without following a link, so a host that can write the folder cannot plant a
// symbolic link there that makes this root process write another file of this host.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';

const CREATE = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;

const tmpOf = (file: string): string => `${file}.tmp-${crypto.randomBytes(6).toString('hex')}`;

export async function writeFileAtomic(
  file: string,
  data: string,
  opts: { mode?: number; sync?: boolean } = {},
): Promise<void> {
  const tmp = tmpOf(file);
  const fh = await fsp.open(tmp, CREATE, opts.mode ?? 0o644);
  try {
    try {
      await fh.writeFile(data);
      if (opts.sync) await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}

/**
 * The same without the thread pool, for a command about to exit: four of its round trips were
 * ~3-7 ms of a `move-vm`'s wall after its last line (measured); a small file's calls take less.
 */
export function writeSmallFileAtomicSync(file: string, data: string, mode: number): void {
  const tmp = tmpOf(file);
  try {
    const fd = fs.openSync(tmp, CREATE, mode);
    try {
      fs.writeFileSync(fd, data);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}
