// Changing a file inside a storage pool without following a symbolic link below the pool's
// root. A path checked against the pools can be redirected between the check and the use by
// whoever writes the pool (another host of a shared pool; QEMU's user in the files it owns),
// and this root process would then chown, chmod or delete a file of the host's own instead.
// Linux's openat2(RESOLVE_NO_SYMLINKS) is not in Node: each component is opened O_PATH and
// O_NOFOLLOW relative to its parent's descriptor (through /proc/self/fd), and the change is
// made through the last descriptor, never through the path again.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError } from '../errors.js';

/** Linux's O_PATH (not in Node's constants): a handle for fstat and /proc/self/fd, opening nothing. */
const O_PATH = 0o10000000;
const STEP = O_PATH | fs.constants.O_NOFOLLOW;

export class PathLinkError extends FerryError {
  constructor(
    what: string,
    p: string,
    why: string,
    fix = 'replace the link by the real file or folder',
    verb: Verb = 'change',
  ) {
    super('E_PATH_LINK', `Cannot ${verb} ${what} ${p}: ${why}; ${fix}`, { context: { path: p } });
  }
}

/** What the caller does with the handle, for the messages: changes the file, or only opens it for a reader. */
export type Verb = 'change' | 'open';

/** What a handle opened beneath a root may be: the caller says which it expects. */
export type Kind = 'file' | 'dir';

/**
 * Runs `fn` with `/proc/self/fd/N` of `p`, opened without following any link below the
 * longest of `roots` that holds it (a root itself is trusted: the admin configured it).
 * Refuses a path under no root, with `..`, or that is (or passes through) a link, or is not `kind`.
 */
export async function withBeneath<T>(
  roots: readonly string[],
  p: string,
  kind: Kind,
  what: string,
  fn: (procPath: string) => Promise<T>,
  verb: Verb = 'change',
): Promise<T> {
  const abs = path.resolve(p);
  const root = rootOf(roots, abs);
  if (!root)
    throw new PathLinkError(
      what,
      p,
      'it is not inside a storage pool of this host',
      "add its pool ('ferry pool add') or change the file by hand",
      verb,
    );
  const rest = path.relative(root.given, abs);
  const parts = rest === '' ? [] : rest.split(path.sep);
  let fh = await fsp.open(root.real, O_PATH | fs.constants.O_DIRECTORY);
  try {
    for (const part of parts) {
      const next = await fsp.open(`/proc/self/fd/${fh.fd}/${part}`, STEP).catch((err: unknown) => {
        throw new FerryError('E_FILE_NOT_FOUND', `Cannot ${verb} ${what} ${p}: ${(err as Error).message}`, {
          cause: err,
          context: { path: p },
        });
      });
      await fh.close();
      fh = next;
      const st = await fh.stat();
      if (st.isSymbolicLink()) throw new PathLinkError(what, p, `${part} is a symbolic link`, undefined, verb);
      if (part !== parts[parts.length - 1] && !st.isDirectory())
        throw new PathLinkError(what, p, `${part} is not a folder`, undefined, verb);
    }
    const st = await fh.stat();
    if (kind === 'dir' ? !st.isDirectory() : !st.isFile())
      throw new PathLinkError(
        what,
        p,
        `it is not a ${kind === 'dir' ? 'folder' : 'regular file'}`,
        kind === 'dir' ? undefined : 'give the path of the file itself',
        verb,
      );
    return await fn(`/proc/self/fd/${fh.fd}`);
  } finally {
    await fh.close();
  }
}

/** Deletes the file `p` (if it exists) through its folder's handle: no link above it is followed. */
export async function unlinkBeneath(roots: readonly string[], p: string, what: string): Promise<void> {
  const abs = path.resolve(p);
  try {
    await withBeneath(roots, path.dirname(abs), 'dir', what, async (dir) => {
      const target = `${dir}/${path.basename(abs)}`;
      const st = await fsp.lstat(target).catch(() => null);
      if (!st) return;
      if (st.isDirectory()) throw new PathLinkError(what, p, 'it is a folder');
      await fsp.unlink(target);
    });
  } catch (err) {
    if ((err as FerryError).code === 'E_FILE_NOT_FOUND') return; // its folder is gone: so is the file
    throw err;
  }
}

/** The root holding `abs`: its given path (for the relative part) and its real path (opened). */
function rootOf(roots: readonly string[], abs: string): { given: string; real: string } | null {
  let best: { given: string; real: string } | null = null;
  for (const r of roots) {
    let real: string;
    try {
      real = fs.realpathSync(r);
    } catch {
      continue;
    }
    for (const given of new Set([path.resolve(r), real])) {
      const inside = abs === given || abs.startsWith(given.endsWith('/') ? given : given + '/');
      if (inside && (!best || given.length > best.given.length)) best = { given, real };
    }
  }
  return best;
}
