// The VM spec's schema: one document (vm.json in the VM's folder) from which every host
// builds the same QEMU command line. QEMU does not check that source and destination agree on
// the device layout, so everything that shapes the guest's hardware lives here. No Node
// imports: the peer protocol, the CLI and the web console share it (src/vm/spec.ts adds the
// host-side helpers).
import * as z from 'zod';
import { ClusterPolicy } from '../cluster/model.js';
import { CDROM_ROLES, DISK_ROLES, DISPLAYS, FIRMWARES, IMAGE_FORMATS, NAME_RE } from './common.js';

export { NAME_RE };
const nameHelp = '1–63 letters, digits, dot, dash or underscore, starting with a letter or digit';

/** True when a relative POSIX path climbs out of its folder ("../x", "a/../../x"). */
export function escapesFolder(p: string): boolean {
  let depth = 0;
  for (const part of p.split('/')) {
    if (part === '..') depth--;
    else if (part !== '' && part !== '.') depth++;
    if (depth < 0) return true;
  }
  return false;
}

const absPath = z
  .string()
  .min(1)
  .refine((p) => p.startsWith('/'), { message: 'must be an absolute path' })
  .refine((p) => !p.includes('\0'), { message: 'must not contain NUL bytes' });
/** Kernel/initrd: absolute, or relative to the VM's folder (so they move with it). */
const filePath = z
  .string()
  .min(1)
  .refine((p) => !p.includes('\0'), { message: 'must not contain NUL bytes' })
  .refine((p) => p.startsWith('/') || !escapesFolder(p), {
    message: 'must stay inside the VM folder when relative',
  });

export const DiskSpec = z
  .object({
    /** Stable id: the guest device id and the base of the QEMU node names (disk0 → disk0-file, disk0). */
    id: z.string().regex(/^[a-z][a-z0-9]{0,15}$/, {
      message: 'must be lowercase letters and digits, starting with a letter, at most 16',
    }),
    path: absPath,
    format: z.enum(IMAGE_FORMATS),
    bus: z.enum(['virtio', 'ide']).default('virtio'),
    readOnly: z.boolean().default(false),
    /** none = host page cache bypassed (cache.direct), required for safe migration on shared storage. */
    cache: z.enum(['none', 'writeback']).default('none'),
    /** Storage pool the disk lives in, when known. */
    pool: z.string().optional(),
    /**
     * 'uefi-vars': the VM's own UEFI variable store (raw, OVMF's size), mapped as flash unit 1
     * instead of a guest disk. It is a disk entry so that every move copies, mirrors and
     * pivots it like one: the firmware writes it while the guest runs. Absent: 'data'.
     */
    role: z.enum(DISK_ROLES).optional(),
    /** Not made by Ferry (attached, imported in place): `vm rm` keeps it unless told to delete it. */
    external: z.boolean().optional(),
  })
  .strict();
export type DiskSpec = z.infer<typeof DiskSpec>;

/**
 * A CD-ROM (read-only ISO image on the IDE/SATA bus). An absolute path is an ISO in a
 * storage pool, used in place; a relative one is a file of the VM's folder (the cloud-init
 * seed), which moves with the folder like the kernel of a kernel-booted VM.
 */
export const CdromSpec = z
  .object({
    id: z.string().regex(/^[a-z][a-z0-9]{0,15}$/, {
      message: 'must be lowercase letters and digits, starting with a letter, at most 16',
    }),
    path: filePath,
    role: z.enum(CDROM_ROLES).default('media'),
    /** Storage pool of an absolute path, when known. */
    pool: z.string().optional(),
  })
  .strict();
export type CdromSpec = z.infer<typeof CdromSpec>;

export const NicSpec = z
  .object({
    id: z.string().regex(/^[a-z][a-z0-9]{0,15}$/),
    switch: z.string().regex(NAME_RE, { message: `must be a switch name (${nameHelp})` }),
    mac: z.string().regex(/^52:54:00(:[0-9a-f]{2}){3}$/, {
      message: 'must be a locally administered MAC 52:54:00:xx:xx:xx in lowercase',
    }),
  })
  .strict();
export type NicSpec = z.infer<typeof NicSpec>;

export const BootSpec = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('disk') }).strict(),
  z
    .object({
      kind: z.literal('kernel'),
      kernel: filePath,
      initrd: filePath.optional(),
      append: z.string().max(4096).default(''),
    })
    .strict(),
]);
export type BootSpec = z.infer<typeof BootSpec>;

/** Disk id of a VM's UEFI variable store (its QEMU node names derive from it, as for every disk). */
export const VARS_DISK_ID = 'uefivars';

export const GUEST_KINDS = ['probe', 'bootblock', 'custom'] as const;

export const VmSpec = z
  .object({
    version: z.literal(1).default(1),
    name: z.string().regex(NAME_RE, { message: `must be ${nameHelp}` }),
    id: z.uuid({ message: 'must be a UUID' }),
    memoryMiB: z
      .number()
      .int()
      .min(16, { message: 'must be at least 16' })
      .max(1024 * 1024, { message: 'must be at most 1 TiB' }),
    cpus: z.number().int().min(1).max(255),
    /** A named QEMU CPU model every involved host supports ('host' only pins a VM to identical hosts). */
    cpuModel: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/)
      .default('qemu64'),
    /** Versioned machine type, so both ends of a migration emulate the same board. */
    machine: z
      .string()
      .regex(/^(pc-i440fx|pc-q35)-\d+\.\d+$/, { message: "must be a versioned machine type such as 'pc-i440fx-7.2'" })
      .default('pc-i440fx-7.2'),
    /** Firmware: SeaBIOS, or OVMF with the VM's variable store (the disk of role 'uefi-vars'). */
    firmware: z.enum(FIRMWARES).default('bios'),
    disks: z.array(DiskSpec).max(16).default([]),
    cdroms: z.array(CdromSpec).max(4).default([]),
    nics: z.array(NicSpec).max(8).default([]),
    boot: BootSpec,
    /**
     * Boot order by device id (disks, CD-ROMs, NICs), first tried first. Absent: the first
     * disk, as VMs made before it existed boot.
     */
    bootOrder: z
      .array(z.string().regex(/^[a-z][a-z0-9]{0,15}$/))
      .max(16)
      .optional(),
    /** 'vga': a standard VGA card shown over VNC (a Unix socket); absent in older VMs: no screen. */
    display: z.enum(DISPLAYS).default('none'),
    guest: z.enum(GUEST_KINDS).default('custom'),
    /** The VM's folder (holds vm.json). Checkpoint and paging folders default to it. */
    configPath: absPath,
    checkpointPath: absPath,
    pagingPath: absPath,
    ha: z.boolean().default(false),
    /** Smart Paging: on a host without room for its memory, its RAM is backed by a file in pagingPath. */
    smartPaging: z.boolean().optional(),
    /** Priority, preferred owners and anti-affinity classes in the failover cluster (with ha). */
    cluster: ClusterPolicy.optional(),
  })
  .strict()
  .superRefine((s, ctx) => {
    const seen = new Set<string>();
    for (const [i, d] of s.disks.entries()) {
      if (seen.has(d.id))
        ctx.addIssue({
          code: 'custom',
          path: ['disks', i, 'id'],
          message: `duplicates disk id '${d.id}'; give each disk its own id`,
        });
      seen.add(d.id);
    }
    const paths = new Set<string>();
    for (const [i, d] of s.disks.entries()) {
      if (paths.has(d.path))
        ctx.addIssue({
          code: 'custom',
          path: ['disks', i, 'path'],
          message: 'is used by another disk of this VM; a disk image can be attached once',
        });
      paths.add(d.path);
    }
    // Disks, CD-ROMs and NICs are all QEMU devices: one id space.
    const deviceIds = new Set(s.disks.map((d) => d.id));
    for (const [i, c] of s.cdroms.entries()) {
      if (deviceIds.has(c.id))
        ctx.addIssue({ code: 'custom', path: ['cdroms', i, 'id'], message: `duplicates device id '${c.id}'` });
      deviceIds.add(c.id);
    }
    for (const [i, n] of s.nics.entries()) {
      if (deviceIds.has(n.id))
        ctx.addIssue({ code: 'custom', path: ['nics', i, 'id'], message: `duplicates NIC id '${n.id}'` });
      deviceIds.add(n.id);
    }
    const vars = s.disks.filter((d) => d.role === 'uefi-vars');
    if (s.firmware === 'uefi' && vars.length !== 1)
      ctx.addIssue({
        code: 'custom',
        path: ['firmware'],
        message: `is 'uefi' but the VM has ${vars.length} disks of role 'uefi-vars'; give it exactly one`,
      });
    if (s.firmware === 'bios' && vars.length > 0)
      ctx.addIssue({
        code: 'custom',
        path: ['firmware'],
        message: "is 'bios' but the VM has a UEFI variable store; use 'uefi' or remove that disk",
      });
    for (const [i, d] of s.disks.entries()) {
      if (d.role === 'uefi-vars' && (d.format !== 'raw' || d.readOnly))
        ctx.addIssue({
          code: 'custom',
          path: ['disks', i],
          message: 'is a UEFI variable store, which must be a writable raw file',
        });
    }
    const bootable = new Set([
      ...s.disks.filter((d) => d.role !== 'uefi-vars').map((d) => d.id),
      ...s.cdroms.filter((c) => c.role === 'media').map((c) => c.id),
      ...s.nics.map((n) => n.id),
    ]);
    for (const [i, id] of (s.bootOrder ?? []).entries()) {
      if (!bootable.has(id))
        ctx.addIssue({
          code: 'custom',
          path: ['bootOrder', i],
          message: `names '${id}', which is not a bootable disk, CD-ROM or NIC of this VM`,
        });
      if (s.bootOrder?.indexOf(id) !== i)
        ctx.addIssue({ code: 'custom', path: ['bootOrder', i], message: `names '${id}' twice` });
    }
    const media = s.disks.some((d) => d.role !== 'uefi-vars') || s.cdroms.some((c) => c.role === 'media');
    if (s.boot.kind === 'disk' && !media) {
      ctx.addIssue({
        code: 'custom',
        path: ['boot'],
        message: "is 'disk' but the VM has no disk; add a disk or boot a kernel",
      });
    }
  });
export type VmSpec = z.infer<typeof VmSpec>;
export type VmSpecInput = z.input<typeof VmSpec>;
