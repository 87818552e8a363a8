// The files QEMU reads at start besides its disks (the kernel, the initrd, CD-ROM images) are
// opened by the agent, not by QEMU: each must lie inside a pool this host may use, is opened
// without following a link below the pool's root (storage/beneath.ts), and reaches QEMU as an
// inherited descriptor, named /proc/self/fd/N on its command line. A path checked and later
// opened by QEMU could be swapped for a link to a host file (/etc/shadow as the initrd) by
// whoever writes a shared pool, between the check and QEMU's open; and a vm.json on a shared
// pool, or the spec of an HA record, that names a host file is refused here, whichever way it
// came (before, only an incoming move's spec was checked).
//
// Disks are still opened by QEMU by path: QEMU writes a node's file name into image headers
// (checkpoints' overlays, block-stream and block-commit), and the agent cannot hand a running
// QEMU a descriptor (QMP's add-fd needs SCM_RIGHTS, which Node's sockets cannot send). Instead
// the agent checks, before the guest runs, that QEMU holds the disks it checked (qemu/opened-files.ts).
import fsp, { type FileHandle } from 'node:fs/promises';
import { FerryError } from '../errors.js';
import { assertInUsablePool, isInside, realPathLoose, type PoolDef } from '../storage/pools.js';
import { withBeneath } from '../storage/beneath.js';
import { resolveVmFile, type VmSpec } from './spec.js';

/** The child's first descriptor after stdin, stdout and stderr. */
const FIRST_FD = 3;

export interface BootFiles {
  /** QEMU's name for one of the files (its absolute path): /proc/self/fd/N. */
  readonly nameOf: (abs: string) => string;
  /** The descriptors to hand QEMU, in order: they become its fds 3, 4, … */
  readonly fds: number[];
  /** Closes the agent's copies (QEMU keeps its own). */
  close(): Promise<void>;
}

/** The kernel, initrd and CD-ROM images of `spec`, each with what to call it in a message. */
export function bootFilesOf(spec: VmSpec): Array<{ abs: string; what: string }> {
  const of = `of VM '${spec.name}'`;
  const out: Array<{ abs: string; what: string }> = [];
  if (spec.boot.kind === 'kernel') {
    out.push({ abs: resolveVmFile(spec, spec.boot.kernel), what: `the kernel ${of}` });
    if (spec.boot.initrd) out.push({ abs: resolveVmFile(spec, spec.boot.initrd), what: `the initrd ${of}` });
  }
  for (const c of spec.cdroms) out.push({ abs: resolveVmFile(spec, c.path), what: `CD-ROM ${c.id} ${of}` });
  return out;
}

/**
 * Opens the boot files of `spec` read-only for QEMU (see above). Refuses a file outside the
 * usable pools, or reached through a link below a pool's root, before anything is started.
 */
export async function openBootFiles(
  spec: VmSpec,
  pools: readonly PoolDef[],
  host: string,
  opts: { signal?: AbortSignal } = {},
): Promise<BootFiles> {
  const roots = pools.map((p) => p.path);
  const handles: FileHandle[] = [];
  const names = new Map<string, string>();
  try {
    for (const { abs, what } of bootFilesOf(spec)) {
      opts.signal?.throwIfAborted();
      if (names.has(abs)) continue;
      // A path outside every pool gets the pools' own refusal (it lists them); one inside is
      // opened first, so a link below the pool's root is named as such, then its pool must be
      // usable here (reachable, granted).
      const inside = pools.some((p) => isInside(abs, p.path) || isInside(abs, realPathLoose(p.path)));
      if (!inside) await assertInUsablePool([...pools], host, abs, what);
      const fh = await withBeneath(roots, abs, 'file', what, (at) => fsp.open(at, 'r'), 'open');
      handles.push(fh);
      await assertInUsablePool([...pools], host, abs, what);
      names.set(abs, `/proc/self/fd/${FIRST_FD + handles.length - 1}`);
    }
  } catch (err) {
    await Promise.all(handles.map((h) => h.close()));
    throw err;
  }
  return {
    nameOf: (abs) => {
      const name = names.get(abs);
      // Every boot file was opened above: a miss is a bug, said as one.
      if (!name)
        throw new FerryError(
          'E_INTERNAL',
          `Cannot start VM '${spec.name}': ${abs} was not opened for QEMU; report this bug`,
        );
      return name;
    },
    fds: handles.map((h) => h.fd),
    close: async () => {
      await Promise.all(handles.map((h) => h.close()));
    },
  };
}
