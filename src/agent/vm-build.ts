// From a `vm new` request to the VM's spec and what to create: where its folder and every
// disk go, each checked (inside a pool this host may use, switches that exist, an attached
// image readable and supported) before anything is written.
import path from 'node:path';
import { InvalidInputError, NotFoundError, messageOf } from '../errors.js';
import { imageInfo, isImageFormat, type ImageFormat } from '../qemu/img.js';
import { bootblockVm, probeVm } from '../vm/guests.js';
import { isFirmwareBoot, realGuestVm } from '../vm/real-guest.js';
import type { CreateVmOptions } from '../vm/lifecycle.js';
import { newMac, newVmId, type DiskSpec, type VmSpecInput } from '../vm/spec.js';
import { assertInUsablePool, findPool, type PoolDef } from '../storage/pools.js';
import type { VmCreateBody } from '../api/schemas.js';
import { assertHaStorage, haFiles, sharedPoolHint } from '../cluster/ha-storage.js';

export interface BuildContext {
  host: string;
  pools: PoolDef[];
  /** Throws when this host has no switch of that name. */
  checkSwitch(name: string): void;
  /** Machine types this host's QEMU supports (for firmware-booted guests). */
  machineTypes(): Promise<string[]>;
  signal?: AbortSignal;
}

export interface BuiltVm {
  spec: VmSpecInput;
  create: CreateVmOptions;
}

/** A disk of the new VM, with its size when it is to be created (not attached). */
interface PlannedDisk {
  disk: DiskSpec;
  createBytes?: number;
}

export async function buildVm(body: VmCreateBody, ctx: BuildContext): Promise<BuiltVm> {
  const local = ctx.pools.find((p) => p.kind === 'local');
  if (!body.path && !local)
    throw new InvalidInputError(
      `Cannot create VM '${body.name}': host '${ctx.host}' has no local pool; give the VM's folder with --path`,
    );
  const folder = path.resolve(body.path ?? path.join(local?.path ?? '/', body.name));
  const folderPool = await assertInUsablePool(ctx.pools, ctx.host, folder, 'VM folder');
  for (const s of body.switches) ctx.checkSwitch(s);
  const disks = await planDisks(body, folder, ctx);

  let built: BuiltVm;
  const base = { name: body.name, configPath: folder, memoryMiB: body.memoryMiB, cpus: body.cpus };
  if (body.guest === 'probe') {
    // The probe's first disk is its data disk; the others follow it.
    const [first, ...rest] = disks;
    built = probeVm({
      ...base,
      ...(body.probe ? { probe: body.probe } : {}),
      dataDisk: first
        ? {
            path: first.disk.path,
            format: first.disk.format,
            ...(first.createBytes !== undefined ? { sizeBytes: first.createBytes } : {}),
            existing: first.createBytes === undefined,
            ...(first.disk.pool !== undefined ? { pool: first.disk.pool } : {}),
          }
        : { pool: folderPool.name },
    });
    built.spec.disks = [...(built.spec.disks ?? []), ...rest.map((d) => d.disk)];
    built.create.createDisks = { ...built.create.createDisks, ...sizesOf(rest) };
  } else if (body.guest === 'bootblock') {
    built = bootblockVm(base);
    built.spec.disks = [...(built.spec.disks ?? []), ...disks.map((d) => d.disk)];
    built.create.createDisks = sizesOf(disks);
  } else if (isFirmwareBoot(body)) {
    built = await realGuestVm(body, {
      host: ctx.host,
      pools: ctx.pools,
      folder,
      disks: disks.map((d) => ({ ...d.disk, ...(d.createBytes !== undefined ? { createBytes: d.createBytes } : {}) })),
      machineTypes: await ctx.machineTypes(),
      ...(ctx.signal ? { signal: ctx.signal } : {}),
    });
  } else {
    built = customVm(body, folder, disks);
  }
  built.spec.nics = body.switches.map((s, i) => ({ id: `nic${i}`, switch: s, mac: newMac() }));
  built.spec.ha = body.ha;
  if (body.smartPaging) built.spec.smartPaging = true;
  if (body.ha) {
    assertHaStorage(
      haFiles({ disks: built.spec.disks ?? [], configPath: folder }),
      ctx.pools,
      `create HA VM '${body.name}'`,
      `put its folder and disks on a shared pool (--path ${sharedPoolHint(ctx.pools)}, --disk SIZE,pool=POOL)`,
      body.name,
    );
  }
  if (body.cluster) {
    if (!body.ha)
      throw new InvalidInputError(
        `Cannot create VM '${body.name}': a priority, preferred owners or anti-affinity apply to clustered VMs; ` +
          'add --ha',
      );
    built.spec.cluster = body.cluster;
  }
  if (body.cpu) built.spec.cpuModel = body.cpu;
  return built;
}

/** Where each disk goes (an attached image stays where it is), checked before anything is created. */
async function planDisks(body: VmCreateBody, folder: string, ctx: BuildContext): Promise<PlannedDisk[]> {
  const out: PlannedDisk[] = [];
  for (const [i, d] of body.disks.entries()) {
    const id = `disk${i}`;
    const common = { id, bus: 'virtio' as const, readOnly: false, cache: 'none' as const };
    if (d.attach !== undefined) {
      const attach = d.attach;
      const pool = await assertInUsablePool(ctx.pools, ctx.host, attach, `disk image ${attach}`);
      const info = await imageInfo(attach, { timeoutMs: 10_000 }).catch((err: unknown) => {
        throw new NotFoundError(
          'E_DISK_NOT_FOUND',
          `Cannot attach ${attach} to VM '${body.name}': ${messageOf(err)}; give an existing disk image`,
          { path: attach },
        );
      });
      if (!isImageFormat(info.format))
        throw new InvalidInputError(
          `Cannot attach ${attach}: format '${info.format}' is not supported; convert it to qcow2, raw, vhdx or vpc`,
          { path: attach },
        );
      if (d.format && d.format !== info.format)
        throw new InvalidInputError(
          `Cannot attach ${attach} as ${d.format}: the image is ${info.format}; drop format= or convert it`,
          { path: attach },
        );
      out.push({ disk: { ...common, path: attach, format: info.format, pool: pool.name } });
    } else if (d.sizeBytes !== undefined) {
      const format: ImageFormat = d.format ?? 'qcow2';
      const dir = d.pool ? path.join(findPool(ctx.pools, d.pool, ctx.host).path, body.name) : folder;
      const p = path.join(dir, `${id}.${format}`);
      const pool = await assertInUsablePool(ctx.pools, ctx.host, p, `disk ${id}`);
      out.push({ disk: { ...common, path: p, format, pool: pool.name }, createBytes: d.sizeBytes });
    } else {
      // The request schema refuses this already; kept so a disk is never silently dropped.
      throw new InvalidInputError(`Cannot create disk ${id} of VM '${body.name}': give a size or attach`);
    }
  }
  return out;
}

/** Disk id → size, for the disks to be created. */
function sizesOf(disks: PlannedDisk[]): Record<string, number> {
  return Object.fromEntries(disks.flatMap((d) => (d.createBytes !== undefined ? [[d.disk.id, d.createBytes]] : [])));
}

/** A VM of the user's own: boots a kernel copied into its folder, or its first disk. */
function customVm(body: VmCreateBody, folder: string, disks: PlannedDisk[]): BuiltVm {
  const copyIn: Array<{ from: string; to: string }> = [];
  if (body.kernel) copyIn.push({ from: body.kernel, to: 'vmlinuz' });
  if (body.initrd) copyIn.push({ from: body.initrd, to: 'initrd.img' });
  if (!body.kernel && (body.initrd || body.append))
    throw new InvalidInputError(`Cannot create VM '${body.name}': --initrd and --append need --kernel`, {});
  if (!body.kernel && disks.length === 0)
    throw new InvalidInputError(
      `Cannot create VM '${body.name}': it has nothing to boot; ` +
        'give --disk/--attach with a bootable image, --kernel, or --guest probe|bootblock',
      {},
    );
  return {
    spec: {
      name: body.name,
      id: newVmId(),
      memoryMiB: body.memoryMiB,
      cpus: body.cpus,
      disks: disks.map((d) => d.disk),
      boot: body.kernel
        ? {
            kind: 'kernel',
            kernel: 'vmlinuz',
            ...(body.initrd ? { initrd: 'initrd.img' } : {}),
            append: body.append ?? 'console=ttyS0',
          }
        : { kind: 'disk' },
      guest: 'custom',
      configPath: folder,
      checkpointPath: folder,
      pagingPath: folder,
    },
    create: { copyIn, createDisks: sizesOf(disks) },
  };
}
