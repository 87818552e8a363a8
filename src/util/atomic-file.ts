// Replaces a file atomically (temp file, then rename) where others may write the folder: a
// shared pool's VM folder or grants file. The temp file has a random name and is created
// exclusively without following a link, so a host that can write the folder cannot plant a
// symbolic link there that makes this root process write another file of this host.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';

const CREATE = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;

export async function writeFileAtomic(
  file: string,
  data: string,
  opts: { mode?: number; sync?: boolean } = {},
): Promise<void> {
  const tmp = `${file}.tmp-${crypto.randomBytes(6).toString('hex')}`;
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
