// Paths a move creates on a host: files claimed exclusively (O_EXCL), so a path another move
// or VM took is never overwritten, and folders made one by one and reported as made, so an
// undo removes only what this move made (issue 18.10: two moves into one folder). Each is
// made through its folder's handle, opened without links below a pool's root (`roots`): a
// host that writes a shared pool cannot swap a folder for a link to one of this host's.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { exists } from '../vm/folder.js';
import { letQemuThrough, ownHandleForQemu } from '../qemu/user.js';
import { withBeneath } from '../storage/beneath.js';

const CREATE = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;

/**
 * Creates `file` only if nothing is there: the path is then this move's to fill. `claimed`
 * runs as soon as it is (to journal it); through the same descriptor `forQemu` makes it QEMU's
 * user's, and `fill` gets it (createImage's `fd`), which names that very file whatever its path
 * points to by then.
 */
export async function claimFile(
  roots: readonly string[],
  file: string,
  what: string,
  opts: { claimed?: () => void; fill?: (fd: number) => Promise<void>; forQemu?: boolean } = {},
): Promise<void> {
  const { claimed, ...rest } = opts;
  await writeNewFile(roots, file, new Uint8Array(0), what, claimed ?? (() => undefined), rest);
}

/** The folders a host's moves may create in (a pool's root is trusted: the admin configured it). */
export function poolRoots(pools: readonly { path: string }[]): string[] {
  return pools.map((p) => p.path);
}

/**
 * Writes `data` to a new `file`: created exclusively and never through a symbolic link
 * (O_EXCL|O_NOFOLLOW). `claimed` runs once the file is this move's (to journal it). Through
 * the same handle, `sizeBytes` sizes it (sparse), `forQemu` makes it QEMU's user's and `fill`
 * writes it (its descriptor).
 */
export async function writeNewFile(
  roots: readonly string[],
  file: string,
  data: Uint8Array,
  what: string,
  claimed: () => void,
  opts: { sizeBytes?: number; forQemu?: boolean; fill?: (fd: number) => Promise<void> } = {},
): Promise<void> {
  await withBeneath(roots, path.dirname(file), 'dir', `the folder of ${what}`, async (dir) => {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(`${dir}/${path.basename(file)}`, CREATE, 0o644);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST' && code !== 'ELOOP') throw err;
      throw new FerryError(
        'E_DEST_PATH',
        `Cannot write ${what} at ${file}: something is already there (another move or VM?); choose another path`,
        { context: { path: file } },
      );
    }
    try {
      // Inside the try: a journal write that fails still closes the file.
      claimed();
      await fh.writeFile(data);
      if (opts.sizeBytes !== undefined) await fh.truncate(opts.sizeBytes);
      if (opts.forQemu) await ownHandleForQemu(`/proc/self/fd/${fh.fd}`);
      await opts.fill?.(fh.fd);
    } finally {
      await fh.close();
    }
  });
}

/**
 * Makes the missing folders of `dirs`, parents first. Each is made, then reported (`made`
 * receives every folder made so far, to journal): a folder someone else made at the same
 * moment is not ours and is never reported.
 */
export async function makeFolders(
  roots: readonly string[],
  dirs: Iterable<string>,
  made: (created: string[]) => void,
): Promise<string[]> {
  const created: string[] = [];
  for (const dir of new Set(dirs)) {
    const missing: string[] = [];
    for (let p = dir; !(await exists(p)); p = path.dirname(p)) missing.unshift(p);
    for (const p of missing) {
      const ours = await withBeneath(roots, path.dirname(p), 'dir', `the folder above ${p}`, (h) =>
        fsp.mkdir(`${h}/${path.basename(p)}`).then(
          () => true,
          (err: unknown) => {
            if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
            return false;
          },
        ),
      );
      if (ours) {
        // QEMU (qemu.user) passes through to the files made in it; the umask may hide the search bit.
        await withBeneath(roots, p, 'dir', `the folder ${p}`, letQemuThrough);
        created.push(p);
        made([...created]);
      }
    }
  }
  return created;
}

/** Removes the folders `makeFolders` made, newest first; one that is not empty (or is now a link) stays. */
export async function removeFolders(roots: readonly string[], created: readonly string[]): Promise<void> {
  for (const d of [...created].reverse())
    await withBeneath(roots, path.dirname(d), 'dir', `the folder above ${d}`, (h) =>
      fsp.rmdir(`${h}/${path.basename(d)}`),
    ).catch(() => undefined);
}
