// VMs that boot like real machines (`vm new` without --kernel or a test guest): firmware
// (SeaBIOS, or OVMF with a variable store of their own), a versioned pc or q35 board, a first
// disk copied from an image, CD-ROMs (ISOs used in place, in pools), a cloud-init seed made
// in the VM's folder, a boot order and a screen. Everything is checked here, before
// createVm writes the first file.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { InvalidInputError, NotFoundError } from '../errors.js';
import type { VmCreateBody, VmView } from '../api/schemas.js';
import type { ImageFormat } from '../qemu/img.js';
import { ovmfPaths } from '../qemu/firmware.js';
import { assertInUsablePool, type PoolDef } from '../storage/pools.js';
import { buildSeed, SEED_FILE } from './cloud-init.js';
import { checkGrow, probeImage } from './image.js';
import type { CreateVmOptions } from './lifecycle.js';
import { newVmId, VARS_DISK_ID, type CdromSpec, type DiskSpec, type VmSpec, type VmSpecInput } from './spec.js';

/** The UEFI variable store in the VM's folder, and its disk id. */
export const VARS_FILE = 'uefi-vars.fd';
export { VARS_DISK_ID };
/** Disk id of the first disk (the copy of --image). */
const IMAGE_DISK_ID = 'disk0';

/** Is this body a VM booted by firmware from its disks and CD-ROMs (not a kernel, not a test guest)? */
export function isFirmwareBoot(body: VmCreateBody): boolean {
  return body.guest === 'custom' && !body.kernel;
}

export interface RealGuestContext {
  host: string;
  pools: PoolDef[];
  /** The VM's folder, already checked to be in a usable pool. */
  folder: string;
  /** The disks of --disk/--attach as the engine resolved them (new ones carry createBytes). */
  disks: Array<DiskSpec & { createBytes?: number }>;
  /** Machine types this host's QEMU supports (`-machine help`). */
  machineTypes: string[];
  signal?: AbortSignal;
}

/**
 * The spec and creation steps of a firmware-booted VM. Probes the image (once) and builds
 * the cloud-init seed into a temporary folder, so a bad image, a missing ISO or a bad seed
 * fails before the VM's folder exists.
 */
export async function realGuestVm(
  body: VmCreateBody,
  ctx: RealGuestContext,
): Promise<{ spec: VmSpecInput; create: CreateVmOptions }> {
  const machine = resolveMachine(body.machine ?? 'pc', ctx.machineTypes, ctx.host);
  const firmware = body.firmware ?? 'bios';
  if (firmware === 'uefi') ovmfPaths(); // names the missing package before anything else

  const disks: DiskSpec[] = [];
  const createDisks: Record<string, number> = {};
  const importDisks: NonNullable<CreateVmOptions['importDisks']> = {};
  const copyIn: Array<{ from: string; to: string }> = [];
  const writeIn: Record<string, Buffer> = {};
  if (body.image) {
    const image = await probeImage(body.image, { pools: ctx.pools, host: ctx.host, what: 'image', signal: ctx.signal });
    checkGrow(image, body.diskSizeBytes, body.image);
    const format: ImageFormat = body.diskFormat ?? 'qcow2';
    const p = path.join(ctx.folder, `${IMAGE_DISK_ID}.${format}`);
    const pool = await assertInUsablePool(ctx.pools, ctx.host, p, `disk ${IMAGE_DISK_ID}`);
    disks.push({ id: IMAGE_DISK_ID, path: p, format, bus: 'virtio', readOnly: false, cache: 'none', pool: pool.name });
    importDisks[IMAGE_DISK_ID] = { image, ...(body.diskSizeBytes ? { sizeBytes: body.diskSizeBytes } : {}) };
  } else if (body.diskSizeBytes !== undefined || body.diskFormat !== undefined) {
    throw new InvalidInputError(
      `Cannot create VM '${body.name}': --disk-size and --disk-format apply to the copy of --image; ` +
        'give --image, or size new disks with --disk SIZE',
      {},
    );
  }
  // The engine numbered --disk/--attach from disk0; after an image they follow it.
  for (const [i, d] of ctx.disks.entries()) {
    const { createBytes, ...rest } = d;
    const id = `disk${i + disks.length}`;
    const file = createBytes === undefined ? rest.path : path.join(path.dirname(rest.path), `${id}.${rest.format}`);
    disks.push({ ...rest, id, path: file, ...(createBytes === undefined ? { external: true } : {}) });
    if (createBytes !== undefined) createDisks[id] = createBytes;
  }

  const cdroms: CdromSpec[] = [];
  for (const [i, iso] of body.cdroms.entries()) {
    const pool = await assertInUsablePool(ctx.pools, ctx.host, iso, `CD-ROM image`);
    const st = await fsp.stat(iso).catch(() => null);
    if (!st)
      throw new NotFoundError(
        'E_FILE_NOT_FOUND',
        `Cannot use CD-ROM image ${iso}: no such file; give an ISO file inside pool '${pool.name}'`,
        { path: iso },
      );
    if (!st.isFile())
      throw new InvalidInputError(`Cannot use CD-ROM image ${iso}: it is not a file; give an ISO file`, { path: iso });
    cdroms.push({ id: `cd${i}`, path: iso, role: 'media', pool: pool.name });
  }
  if (body.cloudInit) {
    writeIn[SEED_FILE] = await seedBytes(body.cloudInit, ctx.signal);
    cdroms.push({ id: 'cidata', path: SEED_FILE, role: 'cloud-init' });
  }

  if (firmware === 'uefi') {
    const vars = path.join(ctx.folder, VARS_FILE);
    const pool = await assertInUsablePool(ctx.pools, ctx.host, vars, 'UEFI variable store');
    disks.push({
      id: VARS_DISK_ID,
      path: vars,
      format: 'raw',
      bus: 'virtio',
      readOnly: false,
      cache: 'none',
      pool: pool.name,
      role: 'uefi-vars',
    });
    copyIn.push({ from: ovmfPaths().vars, to: VARS_FILE });
  }

  const nics = body.switches.map((_, i) => ({ id: `nic${i}` }));
  const hasMedia = disks.some((d) => d.role !== 'uefi-vars') || cdroms.some((c) => c.role === 'media');
  if (!hasMedia)
    throw new InvalidInputError(
      `Cannot create VM '${body.name}': it has nothing to boot; give --image, --disk or --attach, --cdrom, ` +
        '--kernel, or --guest probe|bootblock',
      {},
    );
  const bootOrder = resolveBootOrder(body.boot, { disks, cdroms, nics }, body.name);
  return {
    spec: {
      name: body.name,
      id: newVmId(),
      memoryMiB: body.memoryMiB,
      cpus: body.cpus,
      machine,
      firmware,
      disks,
      cdroms,
      boot: { kind: 'disk' },
      bootOrder,
      display: body.display ?? 'vga',
      guest: 'custom',
      configPath: ctx.folder,
      checkpointPath: ctx.folder,
      pagingPath: ctx.folder,
    },
    create: { createDisks, importDisks, copyIn, writeIn },
  };
}

/** 'pc' and 'q35' become this host's newest versioned type, so both ends of a move emulate the same board. */
export function resolveMachine(asked: string, machineTypes: string[], host: string): string {
  if (/^pc-(i440fx|q35)-\d+\.\d+$/.test(asked)) {
    if (!machineTypes.includes(asked))
      throw new InvalidInputError(
        `Cannot use machine type '${asked}': QEMU on host '${host}' does not support it; use 'pc' or 'q35'`,
        { machine: asked },
      );
    return asked;
  }
  const family = asked === 'q35' ? 'pc-q35-' : 'pc-i440fx-';
  const versions = machineTypes
    .filter((m) => m.startsWith(family) && /^\d+\.\d+$/.test(m.slice(family.length)))
    .map((m) => ({ m, v: m.slice(family.length).split('.').map(Number) }))
    .sort((a, b) => (a.v[0] ?? 0) - (b.v[0] ?? 0) || (a.v[1] ?? 0) - (b.v[1] ?? 0))
    .map((x) => x.m);
  const newest = versions.at(-1);
  if (!newest)
    throw new InvalidInputError(
      `Cannot use machine '${asked}': QEMU on host '${host}' has no versioned ${asked} type`,
      {
        machine: asked,
      },
    );
  return newest;
}

/**
 * `--boot disk,cdrom,net`: 'disk' is the first disk, 'cdrom' every install CD-ROM, 'net' every
 * NIC, anything else a device id. Default: the first disk, then the CD-ROMs (an empty disk
 * falls through to the installer; an installed one boots).
 */
export function resolveBootOrder(
  asked: string[] | undefined,
  devs: { disks: DiskSpec[]; cdroms: CdromSpec[]; nics: Array<{ id: string }> },
  vm: string,
): string[] {
  const disks = devs.disks.filter((d) => d.role !== 'uefi-vars').map((d) => d.id);
  const cds = devs.cdroms.filter((c) => c.role === 'media').map((c) => c.id);
  const nics = devs.nics.map((n) => n.id);
  const out: string[] = [];
  const add = (ids: string[]): void => {
    for (const id of ids) if (!out.includes(id)) out.push(id);
  };
  for (const item of asked ?? ['disk', 'cdrom']) {
    if (item === 'disk') add(disks.slice(0, 1));
    else if (item === 'cdrom') add(cds);
    else if (item === 'net') add(nics);
    else if ([...disks, ...cds, ...nics].includes(item)) add([item]);
    else
      throw new InvalidInputError(
        `Cannot boot VM '${vm}' from '${item}': it is not 'disk', 'cdrom', 'net' or one of its devices ` +
          `(${[...disks, ...cds, ...nics].join(', ') || 'none'})`,
        { boot: item },
      );
  }
  return out;
}

async function seedBytes(ci: NonNullable<VmCreateBody['cloudInit']>, signal?: AbortSignal): Promise<Buffer> {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-seed-'));
  try {
    const iso = await buildSeed({
      dir: tmp,
      userData: ci.userData,
      ...(ci.metaData !== undefined ? { metaData: ci.metaData } : {}),
      ...(ci.networkConfig !== undefined ? { networkConfig: ci.networkConfig } : {}),
      ...(signal ? { signal } : {}),
    });
    return await fsp.readFile(iso);
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

/** The firmware, boot order, CD-ROMs and screen of a VM as `vm show` reports them. */
export function hardwareView(spec: VmSpec): Pick<VmView, 'firmware' | 'bootOrder' | 'cdroms' | 'display'> {
  return {
    firmware: spec.firmware,
    bootOrder: spec.bootOrder ?? [],
    cdroms: spec.cdroms.map((c) => ({
      id: c.id,
      path: path.isAbsolute(c.path) ? c.path : path.join(spec.configPath, c.path),
      role: c.role,
      pool: c.pool ?? null,
    })),
    display: spec.display,
  };
}
