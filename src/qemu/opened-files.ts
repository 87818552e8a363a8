// QEMU opens a VM's disk images by path (vm/boot-files.ts says why they are not descriptors). A
// path checked by the agent can be swapped, between the check and QEMU's open, for a link to a
// host file or to another VM's disk by whoever writes a shared pool. So once QEMU has opened its
// images, and before the guest runs (QEMU starts with -S), the agent opens each image itself
// without following a link (storage/beneath.ts) and checks that QEMU holds that very file (its
// device and inode among QEMU's descriptors). QEMU holding something else is stopped before the
// guest ran a single instruction or a copy read a block.
//
// Images QEMU adds while it runs (a storage move's targets, an arriving checkpoint chain, a
// checkpoint's overlays) are checked the same way right after. A checkpoint layer a commit
// writes into is opened read-write at the start (argv.ts backingArgs), so QEMU never reopens it
// by path. Left open: a live storage move's copied chain, opened by QEMU from its headers, is
// reopened by path if a commit writes into it before the VM's next start.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { withBeneath } from '../storage/beneath.js';
import { isInside, realPathLoose, type PoolDef } from '../storage/pools.js';

export class SwappedFileError extends FerryError {
  constructor(vm: string, file: string, host: string) {
    super(
      'E_PATH_SWAPPED',
      `Cannot open the disks of VM '${vm}' on ${host}: QEMU opened ${file} but it is not the file the ` +
        'agent checked (it was replaced, or is a link, while QEMU opened it: someone else writes that ' +
        "pool's folder); QEMU was stopped before the guest ran. Check who writes the folder, then try again",
      { context: { vm, file, host } },
    );
  }
}

/**
 * The files of QEMU's `file` block nodes on its command line (`-blockdev` JSON values, or the
 * daemon's list of them): the disk images and their pinned backing files. Pure.
 */
export function blockdevFiles(args: readonly string[]): string[] {
  const out = new Set<string>();
  for (const a of args) {
    if (!a.startsWith('{')) continue;
    let node: { driver?: unknown; filename?: unknown };
    try {
      node = JSON.parse(a) as typeof node;
    } catch {
      continue;
    }
    if (node.driver !== 'file' || typeof node.filename !== 'string') continue;
    // Descriptors the agent opened itself (the boot files) need no check.
    if (node.filename.startsWith('/proc/self/fd/')) continue;
    out.add(node.filename);
  }
  return [...out];
}

const key = (st: fs.BigIntStats): string => `${st.dev}:${st.ino}`;

/**
 * The files process `pid` holds open: device and inode of each descriptor that names a file.
 * Each descriptor's link is read first (procfs builds the name without touching the file's
 * filesystem, so synchronously), and only those naming a path are `stat`ed: sockets, pipes and
 * event descriptors are most of a QEMU's ~20, and one `stat` after another (each a trip through
 * libuv's thread pool) took 20-40 ms of a move's Prepare on a loaded host. The rest stay one at a
 * time: a file on a hung NFS mount then holds one of the pool's four threads, not all of them.
 */
export async function heldFiles(pid: number): Promise<Set<string>> {
  const dir = `/proc/${pid}/fd`;
  const out = new Set<string>();
  for (const fd of await fsp.readdir(dir)) {
    const entry = path.join(dir, fd);
    let target: string;
    try {
      target = fs.readlinkSync(entry);
    } catch {
      continue; // closed since the listing
    }
    if (!target.startsWith('/')) continue; // socket:[…], pipe:[…], anon_inode:[…]
    const st = await fsp.stat(entry, { bigint: true }).catch(() => null);
    if (st) out.add(key(st));
  }
  return out;
}

/**
 * Checks that QEMU (`pid`) holds each of `files` that lies in a pool as the agent finds it,
 * without following links. Files outside every pool (firmware under /usr/share) are the
 * administrator's and not checked. Throws SwappedFileError (or the link's own error: the path
 * is now a link) for the first that differs.
 */
export async function checkOpenedFiles(
  pid: number,
  files: readonly string[],
  pools: readonly PoolDef[],
  who: { vm: string; host: string; signal?: AbortSignal },
): Promise<void> {
  const roots = pools.flatMap((p) => [p.path, realPathLoose(p.path)]);
  const mine = files.filter((f) => roots.some((r) => isInside(f, r)));
  if (mine.length === 0) return;
  const held = await heldFiles(pid);
  for (const f of mine) {
    who.signal?.throwIfAborted();
    const st = await withBeneath(
      pools.map((p) => p.path),
      f,
      'file',
      `the disk image of VM '${who.vm}'`,
      (at) => fsp.stat(at, { bigint: true }),
      'open',
    );
    if (!held.has(key(st))) throw new SwappedFileError(who.vm, f, who.host);
  }
}
