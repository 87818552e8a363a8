// Pre-flight compatibility check of a move (Hyper-V's Compare-VM): pure logic over the VM
// spec and both hosts' views. Every incompatibility says what is wrong and the command
// that fixes it; an empty list means the move may start.
import path from 'node:path';
import type { VmSpec } from '../vm/spec.js';
import type { HostView, PoolView } from '../api/schemas.js';
import type { CpuModelInfo } from '../qemu/cpu-models.js';
import { chooseBaseline, usableModelNames } from '../qemu/cpu-models.js';
import { isInside } from '../storage/pools.js';

export interface Incompatibility {
  code: string;
  message: string;
  field: string;
}

export interface CompareOptions {
  includeStorage: boolean;
  /** Shared-nothing: one folder for everything (config, disks). */
  storagePath?: string;
  /** Shared-nothing: source disk path -> destination path. */
  vhd?: Record<string, string>;
  /** Shared-nothing: the VM folder on the destination. */
  configPath?: string;
}

export interface CompareInput {
  spec: VmSpec;
  /** Running (live move) or stopped. */
  running: boolean;
  source: HostView;
  dest: HostView;
  /** VMs registered on the destination. */
  destVms: Array<{ name: string; id: string }>;
  /** usableCpuModels() on the destination, under its accelerator. */
  destCpuModels: CpuModelInfo[];
  options: CompareOptions;
  /** Virtual size of each disk by source path (shared-nothing space check; skipped without it). */
  diskSizes?: Record<string, number>;
  /** Other files the VM needs where they are (the base images under its checkpoints): shared storage only. */
  sharedFiles?: string[];
  /** Bytes of its checkpoints' files and base images, copied with the VM (counted in the checkpoint folder's pool). */
  chainBytes?: number;
}

export const COMPARE_CODES = {
  SAME_HOST: 'E_SAME_HOST',
  MIGRATION_DISABLED: 'E_MIGRATION_DISABLED',
  DOMAIN: 'E_DOMAIN',
  NAME_EXISTS: 'E_NAME_EXISTS',
  ID_EXISTS: 'E_ID_EXISTS',
  MACHINE_TYPE: 'E_MACHINE_TYPE',
  ACCELERATOR: 'E_ACCELERATOR',
  CPU_VENDOR: 'E_CPU_VENDOR',
  CPU_FEATURES: 'E_CPU_FEATURES',
  MEMORY: 'E_MEMORY',
  SWITCH_MISSING: 'E_SWITCH_MISSING',
  PASSTHROUGH_DISK: 'E_PASSTHROUGH_DISK',
  FORMAT_NOT_MIGRATABLE: 'E_FORMAT_NOT_MIGRATABLE',
  STORAGE_NOT_SHARED: 'E_STORAGE_NOT_SHARED',
  POOL_NOT_GRANTED: 'E_POOL_NOT_GRANTED',
  POOL_UNAVAILABLE: 'E_POOL_UNAVAILABLE',
  DEST_PATH: 'E_DEST_PATH',
  DEST_SPACE: 'E_DEST_SPACE',
} as const;
export type CompareCode = (typeof COMPARE_CODES)[keyof typeof COMPARE_CODES];

/** Memory the destination keeps for itself beyond the VM's (QEMU overhead, the agent). */
export const MEMORY_RESERVE_BYTES = 256 * 1024 * 1024;

const MiB = 1024 * 1024;
/** CPU models that expose the host CPU (under KVM) instead of a fixed feature set. */
const PASSTHROUGH_MODELS = new Set(['host', 'max']);

export interface PlannedDisk {
  index: number;
  id: string;
  source: string;
  dest: string;
  field: string;
}
export interface DestPlan {
  configPath: string;
  checkpointPath: string;
  pagingPath: string;
  disks: PlannedDisk[];
}

/**
 * Where each file goes in a shared-nothing move: `--vhd SRC=DST` first, then
 * `--storage-path DIR` (disks as DIR/<file name>, the VM folder as DIR), else the same path.
 * Checkpoint and paging folders inside the VM folder follow it; others go to DIR or stay.
 */
export function planDestPaths(spec: VmSpec, options: CompareOptions): DestPlan {
  const sp = options.storagePath;
  const configPath = options.configPath ?? sp ?? spec.configPath;
  const follow = (p: string): string => {
    if (isInside(path.resolve(p), path.resolve(spec.configPath)))
      return path.join(configPath, path.relative(path.resolve(spec.configPath), path.resolve(p)));
    return sp ?? p;
  };
  const disks = spec.disks.flatMap((d, index): PlannedDisk[] =>
    isPassthrough(d.path)
      ? []
      : [
          {
            index,
            id: d.id,
            source: d.path,
            field: `disks.${index}.path`,
            dest: options.vhd?.[d.path] ?? (sp !== undefined ? path.join(sp, path.basename(d.path)) : d.path),
          },
        ],
  );
  return { configPath, checkpointPath: follow(spec.checkpointPath), pagingPath: follow(spec.pagingPath), disks };
}

/** What compare-vm reports without refusing the move. */
export function compareWarnings(input: CompareInput): Incompatibility[] {
  return [...smartPagingWarning(input), ...tcgWarning(input)];
}

/**
 * A live move under TCG of a guest that may be Linux without `pti=on`: QEMU 7.2 can lose its
 * writes when the host is busy (docs/tcg-moves.md). Said before the move, not only after a death.
 * The bootblock guest has no paging; a kernel Ferry boots shows its command line; a guest that
 * boots from its disk may be Linux without it.
 */
function tcgWarning(input: CompareInput): Incompatibility[] {
  const { spec, source } = input;
  if (!input.running || source.accelerator.name !== 'tcg' || spec.guest === 'bootblock') return [];
  if (spec.boot.kind === 'kernel' && /(^|\s)pti=on(\s|$)/.test(spec.boot.append)) return [];
  const where = spec.boot.kind === 'kernel' ? 'its kernel command line has no pti=on' : 'if it is Linux';
  return [
    {
      code: 'W_TCG_GUEST_WRITES',
      field: 'accelerator',
      message:
        `VM '${spec.name}' runs without KVM (TCG) on '${source.name}', where QEMU 7.2 can lose a Linux ` +
        `guest's writes during a live move when the host's CPU is busy (docs/tcg-moves.md); ${where}, boot it ` +
        'with pti=on on its kernel command line, or move it while the host is quiet',
    },
  ];
}

/**
 * A running VM that allows Smart Paging and does not fit in the destination's free memory (free
 * memory minus the reserve, --max-vm-memory) arrives with its RAM in a paging file there.
 */
function smartPagingWarning(input: CompareInput): Incompatibility[] {
  const { spec, dest } = input;
  if (!input.running || !spec.smartPaging) return [];
  const avail = dest.memory.freeBytes - MEMORY_RESERVE_BYTES;
  if (spec.memoryMiB * MiB <= avail) return [];
  return [
    {
      code: 'W_SMART_PAGING',
      field: 'memoryMiB',
      message:
        `VM '${spec.name}' needs ${spec.memoryMiB} MiB of memory but '${dest.name}' has ` +
        `${mib(Math.max(0, avail))} MiB for VMs: its RAM will be a Smart Paging file in ${spec.pagingPath} there ` +
        `(slower) until a later move or restart finds room; free memory or raise --max-vm-memory on '${dest.name}'`,
    },
  ];
}

export function compareVm(input: CompareInput): Incompatibility[] {
  const { spec, source, dest, options } = input;
  const out: Incompatibility[] = [];
  const add = (code: CompareCode, field: string, what: string, fix: string): void => {
    out.push({ code, field, message: `Cannot move VM '${spec.name}' to '${dest.name}': ${what}; ${fix}` });
  };

  if (source.name === dest.name) {
    add(
      COMPARE_CODES.SAME_HOST,
      'host',
      `it already runs on host '${dest.name}'`,
      `to move its storage on this host use 'ferry move-storage ${spec.name} --path DIR' (or --vhd SRC=DST), ` +
        'or choose another host with --to',
    );
    return out;
  }

  // Hosts: migration switched on, one domain.
  if (!source.migration.enabled) {
    add(
      COMPARE_CODES.MIGRATION_DISABLED,
      'migration.enabled',
      `migrations are turned off on the source host '${source.name}'`,
      `run 'ferry host set ${source.name} --migrations on'`,
    );
  }
  if (!dest.migration.enabled) {
    add(
      COMPARE_CODES.MIGRATION_DISABLED,
      'migration.enabled',
      `migrations are turned off on '${dest.name}'`,
      `run 'ferry host set ${dest.name} --migrations on'`,
    );
  }
  if (dest.domainId !== source.domainId) {
    add(
      COMPARE_CODES.DOMAIN,
      'domainId',
      `'${dest.name}' is in domain '${dest.domainId}', but '${source.name}' is in domain '${source.domainId}', ` +
        'so they do not trust each other',
      `enrol '${dest.name}' in the domain of '${source.name}' ('ferry host init ${dest.name}' on it, then ` +
        `'ferry domain sign REQUEST' with that domain) and restart its agent with the new certificate`,
    );
  }

  // Identity on the destination.
  const sameName = input.destVms.find((v) => v.name === spec.name);
  if (sameName) {
    add(
      COMPARE_CODES.NAME_EXISTS,
      'name',
      `a VM named '${spec.name}' is already registered there (id ${sameName.id})`,
      `remove it ('ferry vm rm ${spec.name}' on '${dest.name}') or move the VM to another host`,
    );
  }
  const sameId = input.destVms.find((v) => v.id === spec.id);
  if (sameId) {
    add(
      COMPARE_CODES.ID_EXISTS,
      'id',
      `a VM with the same id ${spec.id} is already registered there` +
        `${sameId.name !== spec.name ? ` as '${sameId.name}'` : ''} ` +
        '(a leftover of an earlier move?)',
      `remove that copy ('ferry vm rm ${sameId.name} --keep-disks' on '${dest.name}') and try again`,
    );
  }

  // Board.
  if (!dest.qemu.machineTypes.includes(spec.machine)) {
    const versioned = dest.qemu.machineTypes.filter((m) => /^pc-(i440fx|q35)-\d+\.\d+$/.test(m)).sort(compareMachine);
    const newest = versioned.at(-1);
    add(
      COMPARE_CODES.MACHINE_TYPE,
      'machine',
      `its machine type '${spec.machine}' is not supported by QEMU ${dest.qemu.version} there` +
        (newest ? ` (newest: '${newest}')` : ''),
      `upgrade QEMU on '${dest.name}' to at least the version of '${source.name}' (${source.qemu.version}), ` +
        `or move it to a host that supports '${spec.machine}'`,
    );
  }

  // Accelerator: QEMU cannot carry a running guest's state between KVM and TCG.
  if (input.running && source.accelerator.name !== dest.accelerator.name) {
    add(
      COMPARE_CODES.ACCELERATOR,
      'accelerator',
      `it runs under ${source.accelerator.name} on '${source.name}' but '${dest.name}' uses ${dest.accelerator.name} ` +
        `(${dest.accelerator.reason}), and QEMU cannot move a running VM between accelerators`,
      `choose a host with the ${source.accelerator.name} accelerator, or stop the VM ('ferry vm stop ` +
        `${spec.name}') and move it stopped`,
    );
  }

  checkCpu(input, add);

  // Memory (only a running VM needs it now; one that allows Smart Paging gets a warning instead).
  if (input.running && !spec.smartPaging) {
    const need = spec.memoryMiB * MiB;
    const avail = dest.memory.freeBytes - MEMORY_RESERVE_BYTES;
    if (need > avail) {
      add(
        COMPARE_CODES.MEMORY,
        'memoryMiB',
        `it needs ${spec.memoryMiB} MiB of memory but '${dest.name}' has ${mib(dest.memory.freeBytes)} ` +
          `MiB free, ${mib(Math.max(0, avail))} MiB after its ${mib(MEMORY_RESERVE_BYTES)} MiB reserve`,
        `free at least ${Math.ceil((need - avail) / MiB)} MiB on '${dest.name}' (stop or move VMs away: ` +
          `'ferry vm list --host ${dest.name}'), or choose another host with --to`,
      );
    }
  }

  // Networks.
  const destSwitches = new Set(dest.switches.map((s) => s.name));
  spec.nics.forEach((n, i) => {
    if (!destSwitches.has(n.switch)) {
      const src = source.switches.find((s) => s.name === n.switch);
      const how =
        src?.kind === 'bridge' && src.bridge ? ` --bridge ${src.bridge}` : src?.kind === 'user' ? ' --user' : '';
      add(
        COMPARE_CODES.SWITCH_MISSING,
        `nics.${i}.switch`,
        `switch '${n.switch}' (NIC ${n.id}) does not exist on '${dest.name}'`,
        `create it with 'ferry switch new ${n.switch} --host ${dest.name}${how}'`,
      );
    }
  });

  // Disks that are host devices cannot move at all.
  spec.disks.forEach((d, i) => {
    if (isPassthrough(d.path)) {
      add(
        COMPARE_CODES.PASSTHROUGH_DISK,
        `disks.${i}.path`,
        `disk '${d.id}' is the host block device ${d.path}, which stays with '${source.name}'`,
        `detach it, or convert it to an image first ('qemu-img convert -O qcow2 ${d.path} /POOL/${d.id}.qcow2') ` +
          'and attach the image',
      );
    }
  });

  // QEMU 7.2 puts a migration blocker on vhdx and vpc nodes: a running VM with such a disk
  // cannot move live (its storage can still move on the same host, and a stopped VM moves).
  if (input.running) {
    spec.disks.forEach((d, i) => {
      if (d.format === 'vhdx' || d.format === 'vpc') {
        add(
          COMPARE_CODES.FORMAT_NOT_MIGRATABLE,
          `disks.${i}.format`,
          `disk '${d.id}' is ${d.format}, a format QEMU cannot live-migrate`,
          'stop the VM before moving it, or keep it where it is and convert the disk to qcow2 or raw ' +
            `('qemu-img convert -O qcow2' while stopped)`,
        );
      }
    });
  }

  if (options.includeStorage) checkDestStorage(input, add);
  else checkSharedStorage(input, add);
  checkCdroms(input, add);
  return out;
}

/**
 * ISOs in pools are used in place and never copied (a relative CD-ROM, the cloud-init seed,
 * is a file of the VM's folder and moves with it): the destination must see each one.
 */
function checkCdroms(input: CompareInput, add: Add): void {
  const { spec, dest } = input;
  spec.cdroms.forEach((c, i) => {
    if (!path.isAbsolute(c.path)) return;
    const pool = innermostPool(
      dest.pools.filter((p) => p.kind === 'shared' && p.usable),
      path.resolve(c.path),
    );
    if (!pool)
      add(
        COMPARE_CODES.STORAGE_NOT_SHARED,
        `cdroms.${i}.path`,
        `CD-ROM '${c.id}' (${c.path}) is not in a shared pool '${dest.name}' may use at the same path, ` +
          'and ISOs are not copied',
        `put the ISO in a shared pool granted to '${dest.name}' and attach it from there`,
      );
  });
}

type Add = (code: CompareCode, field: string, what: string, fix: string) => void;

function checkCpu(input: CompareInput, add: Add): void {
  const { spec, source, dest } = input;
  const model = spec.cpuModel;
  const usesKvm = source.accelerator.name === 'kvm' || dest.accelerator.name === 'kvm';
  const compat =
    'recreate the VM with a baseline model every host supports ' + `('ferry vm new ${spec.name} ... --cpu compat')`;

  // Pass-through models show the host's own CPU under KVM: vendor and flags must match.
  if (PASSTHROUGH_MODELS.has(model) && usesKvm) {
    if (source.cpu.vendor !== dest.cpu.vendor) {
      add(
        COMPARE_CODES.CPU_VENDOR,
        'cpu.vendor',
        `its CPU model '${model}' passes the host CPU through, and '${source.name}' has a ${source.cpu.vendor} ` +
          `CPU but '${dest.name}' a ${dest.cpu.vendor} one`,
        `${compat}, or move it to a host with a ${source.cpu.vendor} CPU`,
      );
    }
    const destFlags = new Set(dest.cpu.flags);
    const missing = source.cpu.flags.filter((f) => !destFlags.has(f));
    if (missing.length > 0) {
      add(
        COMPARE_CODES.CPU_FEATURES,
        'cpu.flags',
        `its CPU model '${model}' passes the host CPU through, ` +
          `and the CPU of '${dest.name}' lacks ${listOf(missing)} ` +
          `that '${source.name}' has`,
        `${compat}, or move it to a host with the same CPU`,
      );
    }
  }

  const info = input.destCpuModels.find((m) => m.name === model);
  const newest = chooseBaseline([usableModelNames(input.destCpuModels)]);
  if (!info) {
    add(
      COMPARE_CODES.CPU_FEATURES,
      'cpuModel',
      `its CPU model '${model}' is unknown to QEMU on '${dest.name}'`,
      `${compat}, or use a model both hosts know (newest usable on '${dest.name}': '${newest}')`,
    );
  } else if (info.unavailableFeatures.length > 0) {
    add(
      COMPARE_CODES.CPU_FEATURES,
      'cpuModel',
      `its CPU model '${model}' needs ${listOf(info.unavailableFeatures)}, ` +
        `which '${dest.name}' (${dest.accelerator.name}) ` +
        'cannot provide',
      `${compat}, or use a model both hosts support (newest usable on '${dest.name}': '${newest}')`,
    );
  }
}

/** Storage stays where it is: every file must be in a shared pool the destination uses at the same path. */
function checkSharedStorage(input: CompareInput, add: Add): void {
  const { spec, source, dest } = input;
  const items: Array<{ p: string; field: string; label: string }> = [];
  spec.disks.forEach((d, i) => {
    if (!isPassthrough(d.path)) items.push({ p: d.path, field: `disks.${i}.path`, label: `disk '${d.id}'` });
  });
  items.push({ p: spec.configPath, field: 'configPath', label: 'its configuration folder' });
  const cfg = path.resolve(spec.configPath);
  if (!isInside(path.resolve(spec.checkpointPath), cfg))
    items.push({ p: spec.checkpointPath, field: 'checkpointPath', label: 'its checkpoint folder' });
  if (
    !isInside(path.resolve(spec.pagingPath), cfg) &&
    path.resolve(spec.pagingPath) !== path.resolve(spec.checkpointPath)
  ) {
    items.push({ p: spec.pagingPath, field: 'pagingPath', label: 'its paging folder' });
  }
  for (const p of input.sharedFiles ?? []) {
    if (!items.some((it) => path.resolve(it.p) === path.resolve(p)))
      items.push({ p, field: 'checkpoints', label: 'the base image of its checkpoints' });
  }

  for (const it of items) {
    const r = path.resolve(it.p);
    const srcPool = innermostPool(source.pools, r);
    const dstPool = innermostPool(
      dest.pools.filter((p) => p.kind === 'shared'),
      r,
    );
    const notShared = (why: string): void =>
      add(
        COMPARE_CODES.STORAGE_NOT_SHARED,
        it.field,
        `${it.label} (${it.p}) ${why}`,
        `add --include-storage to copy it ('ferry move-vm ${spec.name} --to ${dest.name} --include-storage'), ` +
          `or first move it into a shared pool ('ferry move-storage ${spec.name} --path /SHARED/${spec.name}')`,
      );
    if (srcPool?.kind === 'local') {
      notShared(`is in local pool '${srcPool.name}' of '${source.name}', which '${dest.name}' cannot see`);
      continue;
    }
    if (!dstPool) {
      notShared(`is not in a shared pool that '${dest.name}' sees at the same path`);
      continue;
    }
    if (dstPool.usable) continue;
    if (!dstPool.granted.includes(dest.name)) {
      add(
        COMPARE_CODES.POOL_NOT_GRANTED,
        it.field,
        `${it.label} (${it.p}) is in shared pool '${dstPool.name}', which '${dest.name}' is not granted`,
        `run 'ferry pool grant ${dstPool.name} --host ${dest.name}'`,
      );
    } else {
      add(
        COMPARE_CODES.POOL_UNAVAILABLE,
        it.field,
        `${it.label} (${it.p}) is in shared pool '${dstPool.name}' (${dstPool.path}), which is not reachable ` +
          `on '${dest.name}'`,
        `mount the share at ${dstPool.path} on '${dest.name}' ('ferry pool list --host ${dest.name}' shows its state)`,
      );
    }
  }
}

/**
 * Shared-nothing: each destination path must be absolute, in a pool the destination may use, with room for
 * the disks.
 */
function checkDestStorage(input: CompareInput, add: Add): void {
  const { spec, source, dest, options } = input;
  const plan = planDestPaths(spec, options);
  const fixPath =
    `give a path inside a pool of '${dest.name}' with --storage-path DIR, --vhd SRC=DST or --config-path ` +
    `DIR (pools: ${poolList(dest.pools)})`;

  for (const src of Object.keys(options.vhd ?? {})) {
    if (!spec.disks.some((d) => d.path === src)) {
      add(
        COMPARE_CODES.DEST_PATH,
        `vhd.${src}`,
        `--vhd names '${src}', which is not a disk of the VM ` +
          `(disks: ${spec.disks.map((d) => d.path).join(', ') || 'none'})`,
        `use the source path of one of its disks ('ferry vm show ${spec.name}')`,
      );
    }
  }

  const targets: Array<{ p: string; field: string; label: string; source?: string }> = [
    ...plan.disks.map((d) => ({ p: d.dest, field: d.field, label: `disk '${d.id}'`, source: d.source })),
    { p: plan.configPath, field: 'configPath', label: 'the configuration folder' },
  ];
  const cfg = path.resolve(plan.configPath);
  if (!isInside(path.resolve(plan.checkpointPath), cfg))
    targets.push({ p: plan.checkpointPath, field: 'checkpointPath', label: 'the checkpoint folder' });
  if (
    !isInside(path.resolve(plan.pagingPath), cfg) &&
    path.resolve(plan.pagingPath) !== path.resolve(plan.checkpointPath)
  ) {
    targets.push({ p: plan.pagingPath, field: 'pagingPath', label: 'the paging folder' });
  }

  const seen = new Map<string, string>();
  const perPool = new Map<string, { pool: PoolView; bytes: number; disks: string[] }>();
  for (const t of targets) {
    if (!path.isAbsolute(t.p) || t.p.includes('\0')) {
      add(COMPARE_CODES.DEST_PATH, t.field, `the destination of ${t.label} '${t.p}' is not an absolute path`, fixPath);
      continue;
    }
    const r = path.resolve(t.p);
    if (t.source !== undefined) {
      const other = seen.get(r);
      if (other) {
        add(
          COMPARE_CODES.DEST_PATH,
          t.field,
          `${t.label} and ${other} would both be copied to ${r}`,
          `give each disk its own destination with --vhd SRC=DST`,
        );
        continue;
      }
      seen.set(r, t.label);
    }
    const pool = innermostPool(dest.pools, r);
    if (!pool) {
      add(
        COMPARE_CODES.DEST_PATH,
        t.field,
        `the destination of ${t.label} (${t.p}) is outside every storage pool of '${dest.name}'`,
        fixPath,
      );
      continue;
    }
    if (!pool.usable) {
      const fix =
        pool.kind === 'shared' && !pool.granted.includes(dest.name)
          ? `run 'ferry pool grant ${pool.name} --host ${dest.name}', or ${fixPath}`
          : `mount pool '${pool.name}' at ${pool.path} on '${dest.name}', or ${fixPath}`;
      add(
        COMPARE_CODES.DEST_PATH,
        t.field,
        `the destination of ${t.label} (${t.p}) is in pool '${pool.name}', which '${dest.name}' cannot ` +
          `use${pool.kind === 'shared' && !pool.granted.includes(dest.name) ? ' (not granted)' : ' (not reachable)'}`,
        fix,
      );
      continue;
    }
    if (t.source !== undefined) {
      const srcPool = innermostPool(source.pools, path.resolve(t.source));
      if (r === path.resolve(t.source) && pool.kind === 'shared' && srcPool?.kind === 'shared') {
        add(
          COMPARE_CODES.DEST_PATH,
          t.field,
          `the destination of ${t.label} (${t.p}) is the source file itself, on shared pool '${pool.name}'`,
          `drop --include-storage (the disk is already shared), or give another path with --vhd ${t.source}=DST`,
        );
        continue;
      }
      const size = input.diskSizes?.[t.source];
      if (size !== undefined) {
        const acc = perPool.get(pool.name) ?? { pool, bytes: 0, disks: [] };
        acc.bytes += size;
        acc.disks.push(t.label);
        perPool.set(pool.name, acc);
      }
    }
  }

  const chainBytes = input.chainBytes ?? 0;
  const ckPool = chainBytes > 0 ? innermostPool(dest.pools, path.resolve(plan.checkpointPath)) : null;
  if (ckPool?.usable) {
    const acc = perPool.get(ckPool.name) ?? { pool: ckPool, bytes: 0, disks: [] };
    acc.bytes += chainBytes;
    acc.disks.push('its checkpoints');
    perPool.set(ckPool.name, acc);
  }
  for (const { pool, bytes, disks } of perPool.values()) {
    if (bytes > pool.freeBytes) {
      add(
        COMPARE_CODES.DEST_SPACE,
        'disks',
        `${disks.join(', ')} need ${gib(bytes)} GiB in pool '${pool.name}' (${pool.path}) but it has ` +
          `${gib(pool.freeBytes)} GiB free`,
        `free space in '${pool.name}' on '${dest.name}', or send the disks to a larger pool with --storage-path ` +
          'DIR or --vhd SRC=DST',
      );
    }
  }
}

function isPassthrough(p: string): boolean {
  return isInside(path.resolve(p), '/dev');
}

/** The pool with the longest path that contains `resolved`. */
function innermostPool(pools: readonly PoolView[], resolved: string): PoolView | null {
  let best: PoolView | null = null;
  for (const p of pools) {
    const root = path.resolve(p.path);
    if (isInside(resolved, root) && (!best || root.length > path.resolve(best.path).length)) best = p;
  }
  return best;
}

function poolList(pools: readonly PoolView[]): string {
  const usable = pools.filter((p) => p.usable);
  return usable.length ? usable.map((p) => `${p.name} ${p.path}`).join(', ') : 'none usable';
}

function listOf(items: readonly string[], max = 12): string {
  const shown = items.slice(0, max).join(', ');
  const more = items.length > max ? ` and ${items.length - max} more` : '';
  return `${items.length === 1 ? 'feature' : 'features'} ${shown}${more}`;
}

function compareMachine(a: string, b: string): number {
  const v = (m: string): number[] => (/-(\d+)\.(\d+)$/.exec(m) ?? []).slice(1).map(Number);
  const [a1 = 0, a2 = 0] = v(a);
  const [b1 = 0, b2 = 0] = v(b);
  return a1 - b1 || a2 - b2 || a.localeCompare(b);
}

function mib(bytes: number): number {
  return Math.floor(bytes / MiB);
}
function gib(bytes: number): string {
  return (bytes / 2 ** 30).toFixed(1);
}
