// qemu-img on files of a pool without their paths: whoever writes a shared pool can swap a file
// for a link between the agent's checks and qemu-img's open, and qemu-img runs as root. Each
// file is opened here without following links (storage/beneath.ts) and reaches qemu-img as a
// descriptor (`/dev/fd/N`, which it may reopen read-write: it is that very file), and a chain is
// given whole in a `json:` filename, so qemu-img opens no backing file a header names.
import { withBeneath } from '../storage/beneath.js';
import { isInside, realPathLoose, type PoolDef } from '../storage/pools.js';
import { run, runWithFd, type RunOptions } from '../util/exec.js';
import { createImage, type ImageFormat } from './img.js';
import { BACKING_FORMATS } from './argv.js';
import { FerryError } from '../errors.js';

/** One file of a backing chain with its format. */
export interface Layer {
  path: string;
  format: string;
  /**
   * It names other files (vmdk extents, a qcow2 data file: vm/image.ts probeImage checked them
   * against the pools), which QEMU opens beside the image's own path: it keeps its path.
   */
  external?: boolean;
}

/** The files of a chain that go to qemu-img as descriptors. */
const heldPaths = (chain: readonly Layer[]): string[] => chain.filter((c) => !c.external).map((c) => c.path);

/** The longest backing file name a qcow2 header takes (QEMU's limit). */
const MAX_BACKING_NAME = 1023;

/**
 * A chain (its top first) as one `json:` filename: formats pinned, each file named by
 * `nameOf` (its descriptor), nothing beyond the last file opened.
 */
export function chainFilename(chain: readonly Layer[], nameOf: (p: string) => string = (p) => p): string {
  let below: Record<string, unknown> | null = null;
  for (const c of [...chain].reverse()) {
    const n: Record<string, unknown> = { driver: c.format, file: { driver: 'file', filename: nameOf(c.path) } };
    if (below) n.backing = below;
    else if (BACKING_FORMATS.has(c.format)) n.backing = null;
    below = n;
  }
  return `json:${JSON.stringify(below)}`;
}

/**
 * Runs `fn` with each of `files` that lies in a pool opened without links: `nameOf(path)` is
 * its name for a program run with `fds` (runWithFd: /dev/fd/3, 4, ...), `localOf(path)` its
 * name here (/proc/self/fd/N, to open with any mode). A file outside every
 * pool keeps its path: the callers' pool checks (vm/image.ts probeImage) refuse those first.
 */
export async function withHeldFiles<T>(
  pools: readonly PoolDef[],
  files: readonly string[],
  what: string,
  fn: (nameOf: (p: string) => string, fds: number[], localOf: (p: string) => string) => Promise<T>,
): Promise<T> {
  const given = pools.map((p) => p.path);
  const roots = pools.flatMap((p) => [p.path, realPathLoose(p.path)]);
  const mine = [...new Set(files)].filter((f) => roots.some((r) => isInside(f, r)));
  const held = new Map<string, number>();
  const step = async (i: number): Promise<T> => {
    const f = mine[i];
    if (f === undefined) {
      const names = new Map([...held.keys()].map((p, k): [string, string] => [p, `/dev/fd/${3 + k}`]));
      const local = (p: string): string => {
        const fd = held.get(p);
        return fd === undefined ? p : `/proc/self/fd/${fd}`;
      };
      return fn((p) => names.get(p) ?? p, [...held.values()], local);
    }
    return withBeneath(
      given,
      f,
      'file',
      what,
      async (proc) => {
        held.set(f, Number(proc.slice('/proc/self/fd/'.length)));
        return step(i + 1);
      },
      'open',
    );
  };
  return step(0);
}

/** Runs qemu-img with `fds` (none: a plain run). */
function qemuImg(args: string[], fds: number[], opts: RunOptions): Promise<unknown> {
  return fds.length ? runWithFd('qemu-img', args, fds, opts) : run('qemu-img', args, opts);
}

export interface HeldOptions extends Pick<RunOptions, 'signal' | 'timeoutMs'> {
  pools: readonly PoolDef[];
  /** Names the files in messages ("an image of VM 'web'"). */
  what: string;
}

/** Copies `chain[0]`'s data into `chain[1]` (`qemu-img commit`); the top is left empty. */
export async function commitHeld(chain: readonly Layer[], opts: HeldOptions): Promise<void> {
  await withHeldFiles(opts.pools, heldPaths(chain), opts.what, (nameOf, fds) =>
    qemuImg(['commit', '-q', chainFilename(chain, nameOf)], fds, { timeoutMs: 30 * 60_000, ...opts }),
  );
}

/**
 * Makes `backing` (whose chain is `newChain`, itself first) the backing file of `chain[0]`
 * (`qemu-img rebase`). Safe (default): every cluster that differs between the old and the new
 * backing is copied into the image first, so what it shows stays the same; qemu-img then writes
 * the new chain's `json:` name into the header, which a second, unsafe rebase replaces by the
 * backing's path. `unsafe`: only that header (the two backings hold the same data).
 */
export async function rebaseHeld(
  chain: readonly Layer[],
  newChain: readonly Layer[],
  opts: HeldOptions & { unsafe?: boolean },
): Promise<void> {
  const top = chain[0];
  const backing = newChain[0];
  if (!top || !backing) return;
  // Unsafe: only the image's header is written, no backing read.
  const files = opts.unsafe ? heldPaths([top]) : heldPaths([...chain, ...newChain]);
  const t = { timeoutMs: 30 * 60_000, ...opts };
  await withHeldFiles(opts.pools, files, opts.what, async (nameOf, fds) => {
    const only = chainFilename([top], nameOf);
    const named = ['rebase', '-q', '-u', '-b', backing.path, '-F', backing.format, only];
    if (!opts.unsafe) {
      const to = chainFilename(newChain, nameOf);
      if (to.length > MAX_BACKING_NAME)
        throw new FerryError(
          'E_CHAIN_TOO_LONG',
          `Cannot change the backing file of ${top.path} while its VM is stopped: the chain below it has ` +
            `${newChain.length} files, too many to name in its header during the copy; start the VM and remove ` +
            'the checkpoint while it runs',
          { context: { path: top.path, files: newChain.length } },
        );
      await qemuImg(['rebase', '-q', '-b', to, '-F', backing.format, chainFilename(chain, nameOf)], fds, t);
      // The header now names descriptors: put the path back, or say how (the data is all there).
      await qemuImg(named, fds, t).catch((err: unknown) => {
        throw new FerryError(
          'E_IMAGE_HEADER',
          `Cannot name ${backing.path} as the backing file of ${top.path}: qemu-img failed after the data was ` +
            `copied; run 'qemu-img rebase -u -b ${backing.path} -F ${backing.format} ${top.path}'`,
          { context: { path: top.path }, cause: err },
        );
      });
      return;
    }
    await qemuImg(named, fds, t);
  });
}

/**
 * Copies a chain (its top first; flattened) into the new, empty file open as `fd` (claimed by
 * the caller: claim.ts, or O_EXCL): the image is made there in `format`, `sizeBytes` big (at
 * least the chain's), then filled with only the data (zeros stay sparse).
 */
export async function convertHeld(
  chain: readonly Layer[],
  fd: number,
  dest: { path: string; format: ImageFormat; sizeBytes: number },
  opts: HeldOptions,
): Promise<void> {
  const t = { timeoutMs: 3600_000, ...opts };
  await createImage(dest.path, dest.format, dest.sizeBytes, { fd, ...t });
  await withHeldFiles(opts.pools, heldPaths(chain), opts.what, async (nameOf, fds) => {
    const args = ['convert', '-q', '-n', '--target-is-zero', chainFilename(chain, nameOf), '-O', dest.format];
    await runWithFd('qemu-img', [...args, `/dev/fd/${3 + fds.length}`], [...fds, fd], t);
  });
}

/** The persistent dirty bitmaps stored in a qcow2 image no QEMU has open (their names), read through a handle. */
export async function listBitmapsHeld(file: string, opts: HeldOptions): Promise<string[]> {
  const { stdout } = await withHeldFiles(opts.pools, [file], opts.what, (nameOf, fds) => {
    const args = ['info', '--output=json', chainFilename([{ path: file, format: 'qcow2' }], nameOf)];
    return fds.length ? runWithFd('qemu-img', args, fds, opts) : run('qemu-img', args, opts);
  });
  const j = JSON.parse(stdout) as { 'format-specific'?: { data?: { bitmaps?: Array<{ name?: unknown }> } } };
  return (j['format-specific']?.data?.bitmaps ?? []).flatMap((b) => (typeof b.name === 'string' ? [b.name] : []));
}

/** Removes persistent dirty bitmap `name` from a qcow2 image no QEMU has open, through a handle. */
export async function removeBitmapHeld(file: string, name: string, opts: HeldOptions): Promise<void> {
  await withHeldFiles(opts.pools, [file], opts.what, (nameOf, fds) =>
    qemuImg(['bitmap', '--remove', chainFilename([{ path: file, format: 'qcow2' }], nameOf), name], fds, {
      timeoutMs: 60_000,
      ...opts,
    }),
  );
}
