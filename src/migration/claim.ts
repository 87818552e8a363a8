// Paths a move creates on a host: files claimed exclusively (O_EXCL), so a path another move
// or VM took is never overwritten, and folders made one by one and reported as made, so an
// undo removes only what this move made (issue 18.10: two moves into one folder).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { exists } from '../vm/folder.js';
import { letQemuThrough } from '../qemu/user.js';

/** Creates `file` only if nothing is there: the path is then this move's to fill. */
export async function claimFile(file: string, what: string): Promise<void> {
  try {
    await (await fsp.open(file, 'wx')).close();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    throw new FerryError(
      'E_DEST_PATH',
      `Cannot write ${what} at ${file}: a file is already there (another move or VM?); choose another path`,
      { context: { path: file } },
    );
  }
}

/**
 * Writes `data` to a new `file`: created exclusively and never through a symbolic link
 * (O_EXCL|O_NOFOLLOW). `claimed` runs once the file is this move's (to journal it).
 */
export async function writeNewFile(file: string, data: Uint8Array, what: string, claimed: () => void): Promise<void> {
  const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, flags, 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST' && (err as NodeJS.ErrnoException).code !== 'ELOOP') throw err;
    throw new FerryError(
      'E_DEST_PATH',
      `Cannot write ${what} at ${file}: something is already there (another move or VM?); choose another path`,
      { context: { path: file } },
    );
  }
  claimed();
  try {
    await fh.writeFile(data);
  } finally {
    await fh.close();
  }
}

/**
 * Makes the missing folders of `dirs`, parents first. Each is made, then reported (`made`
 * receives every folder made so far, to journal): a folder someone else made at the same
 * moment is not ours and is never reported.
 */
export async function makeFolders(dirs: Iterable<string>, made: (created: string[]) => void): Promise<string[]> {
  const created: string[] = [];
  for (const dir of new Set(dirs)) {
    const missing: string[] = [];
    for (let p = dir; !(await exists(p)); p = path.dirname(p)) missing.unshift(p);
    for (const p of missing) {
      const ours = await fsp.mkdir(p).then(
        () => true,
        (err: unknown) => {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          return false;
        },
      );
      if (ours) {
        // QEMU (qemu.user) passes through to the files made in it; the umask may hide the search bit.
        await letQemuThrough(p);
        created.push(p);
        made([...created]);
      }
    }
  }
  return created;
}

/** Removes the folders `makeFolders` made, newest first; one that is not empty stays. */
export async function removeFolders(created: readonly string[]): Promise<void> {
  for (const d of [...created].reverse()) await fsp.rmdir(d).catch(() => undefined);
}
