// How a shared-nothing move copies its disks (`--resumable auto|always|never`, docs/moves.md):
// decided once, when the compare step plans the move (plan.ts), kept in the plan and in the
// record's `diskCopy`; the prepare step and the mirror and backup steps read it there.
import type { ResumableMode } from '../api/defaults.js';

/** The record's `diskCopy`: the mirror, resumable backup passes, or a stopped VM's qemu-img copy. */
export type DiskCopy = 'mirror' | 'resumable' | 'offline';

export interface CopyChoice {
  method: DiskCopy;
  why: string;
}

/**
 * `--resumable auto` copies by backup passes only when the disks hold at least this much
 * (allocated, what a full copy really sends): below it a cut costs little to redo, while the
 * passes' extra downtime (docs/performance.md) is paid on every move.
 */
export const RESUMABLE_MIN_BYTES = 1024 ** 3;

const gib = (n: number): string => `${(n / 1024 ** 3).toFixed(2)} GiB`;

type Disk = { id: string; format: string; allocatedBytes: number; readOnly?: boolean };

/** A running VM's copy; `onChain` is a VM over a copied checkpoint chain (the mirror's sync=top). */
export function chooseCopy(mode: ResumableMode, disks: ReadonlyArray<Disk>, onChain: boolean): CopyChoice {
  const mirror = (why: string): CopyChoice => ({ method: 'mirror', why });
  if (mode === 'never') return mirror('--resumable never');
  if (onChain) return mirror('it sits on a checkpoint chain');
  const odd = disks.find((d) => d.format !== 'qcow2' && d.format !== 'raw');
  if (odd) return mirror(`disk '${odd.id}' is ${odd.format} (only qcow2 and raw resume)`);
  if (mode === 'always') return { method: 'resumable', why: '--resumable always' };
  const bytes = disks.reduce((a, d) => a + d.allocatedBytes, 0);
  return bytes >= RESUMABLE_MIN_BYTES
    ? { method: 'resumable', why: `the disks hold ${gib(bytes)}, at least ${gib(RESUMABLE_MIN_BYTES)}` }
    : mirror(`the disks hold ${gib(bytes)}, under ${gib(RESUMABLE_MIN_BYTES)} (--resumable auto)`);
}

/**
 * The move's copy. A stopped VM's disks are read by qemu-img, unless `--resumable` chooses the
 * resumable copy and every disk is qcow2: then a disk daemon runs the same backup passes
 * (kinds/stopped-copy.ts), and the bitmap of a cut copy lives on in the image (a raw disk has
 * nowhere to store it once the daemon quits, a read-only one cannot be written).
 */
export function moveCopy(
  running: boolean,
  mode: ResumableMode | undefined,
  disks: ReadonlyArray<Disk>,
  onChain: boolean,
): CopyChoice {
  const c = chooseCopy(mode ?? 'auto', disks, onChain);
  if (running) return c;
  const offline = (why: string): CopyChoice => ({
    method: 'offline',
    why: `the VM is stopped (qemu-img copies its disks: ${why})`,
  });
  if (c.method !== 'resumable') return offline(c.why);
  const raw = disks.find((d) => d.format !== 'qcow2');
  if (raw) return offline(`disk '${raw.id}' is ${raw.format}, only qcow2 stores the bitmap`);
  // QEMU accepts the bitmap on a read-only node but cannot store it ("Lost persistent bitmaps").
  const ro = disks.find((d) => d.readOnly);
  if (ro) return offline(`disk '${ro.id}' is read-only, so its bitmap cannot be stored`);
  return { method: 'resumable', why: `${c.why}; a disk daemon reads the stopped VM's disks` };
}
