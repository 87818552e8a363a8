// Ready-made specs for the project's test guests (`vm new --guest probe|bootblock`).
import path from 'node:path';
import { NotFoundError } from '../errors.js';
import type { ImageFormat } from '../qemu/img.js';
import { probeGuestFiles } from '../../guest/paths.js';
import { bootblockBytes, BOOTBLOCK_DEFAULT_MEMORY_MIB, patternEndFor } from '../../guest/bootblock.js';
import { newVmId, type VmSpecInput } from './spec.js';
import type { CreateVmOptions } from './lifecycle.js';

export interface ProbeOptions {
  /** Memory dirtier: working set in MiB, optional rate in MiB/s (else as fast as it can). */
  dirty?: { mib: number; mibps?: number };
  noWriter?: boolean;
  writerIntervalMs?: number;
}

export interface GuestVmInput {
  name: string;
  configPath: string;
  memoryMiB?: number;
  cpus?: number;
  /** The probe's data disk (first disk): created unless `existing`. */
  dataDisk?: { path?: string; format?: ImageFormat; sizeBytes?: number; existing?: boolean; pool?: string };
  probe?: ProbeOptions;
}

export function probeAppend(p: ProbeOptions = {}): string {
  // pti=on: a CR3 switch at every entry from user mode, and each one flushes QEMU's TCG TLB. Without it,
  // QEMU 7.2 under TCG loses the guest's writes made through TLB entries that stayed writable
  // across a dirty-bitmap sync, and a busy guest's kernel oopses after a move (docs/tcg-moves.md).
  const a = ['console=ttyS0', 'quiet', 'panic=-1', 'pti=on'];
  if (p.noWriter) a.push('ferry.nowriter');
  if (p.dirty) a.push(`ferry.dirty=${p.dirty.mib}${p.dirty.mibps ? `@${p.dirty.mibps}` : ''}`);
  if (p.writerIntervalMs !== undefined) a.push(`ferry.wint=${p.writerIntervalMs}`);
  return a.join(' ');
}

/** The Linux probe guest: kernel + initrd copied into the VM folder, a data disk for the writer. */
export function probeVm(input: GuestVmInput): { spec: VmSpecInput; create: CreateVmOptions } {
  const files = probeGuestFiles();
  if (!files)
    throw new NotFoundError(
      'E_GUEST_NOT_BUILT',
      'Cannot create a probe VM: the probe guest is not built; run scripts/setup',
      {},
    );
  const disk = input.dataDisk ?? {};
  const format = disk.format ?? 'qcow2';
  const diskPath = disk.path ?? path.join(input.configPath, `data.${format}`);
  return {
    spec: {
      name: input.name,
      id: newVmId(),
      memoryMiB: input.memoryMiB ?? 256,
      cpus: input.cpus ?? 1,
      disks: [{ id: 'disk0', path: diskPath, format, ...(disk.pool ? { pool: disk.pool } : {}) }],
      boot: { kind: 'kernel', kernel: 'vmlinuz', initrd: 'initrd.img', append: probeAppend(input.probe) },
      guest: 'probe',
      configPath: input.configPath,
      checkpointPath: input.configPath,
      pagingPath: input.configPath,
    },
    create: {
      copyIn: [
        { from: files.kernel, to: 'vmlinuz' },
        { from: files.initrd, to: 'initrd.img' },
      ],
      createDisks: disk.existing ? {} : { disk0: disk.sizeBytes ?? 64 * 1024 * 1024 },
    },
  };
}

/** The 512-byte memory-pattern guest, booted from a raw image in its folder. */
export function bootblockVm(input: GuestVmInput): { spec: VmSpecInput; create: CreateVmOptions } {
  const memoryMiB = input.memoryMiB ?? BOOTBLOCK_DEFAULT_MEMORY_MIB;
  const img = Buffer.alloc(1 << 20);
  bootblockBytes(patternEndFor(memoryMiB)).copy(img);
  return {
    spec: {
      name: input.name,
      id: newVmId(),
      memoryMiB,
      cpus: input.cpus ?? 1,
      disks: [{ id: 'boot0', path: path.join(input.configPath, 'boot.img'), format: 'raw' }],
      boot: { kind: 'disk' },
      guest: 'bootblock',
      configPath: input.configPath,
      checkpointPath: input.configPath,
      pagingPath: input.configPath,
    },
    create: { writeIn: { 'boot.img': img } },
  };
}
