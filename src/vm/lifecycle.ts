// VM lifecycle on one host: create (validate everything first, then create, rolling back
// on failure), start, stop (ACPI power-down, then force), pause, resume, remove.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, InvalidInputError, NotFoundError } from '../errors.js';
import { buildArgv, diskBlockdevs, type DiskChains, type SwitchBackend } from '../qemu/argv.js';
import { createImage } from '../qemu/img.js';
import { claimFile, poolRoots } from '../migration/claim.js';
import { QemuProcess, type ExitInfo } from '../qemu/process.js';
import { ensureSandbox } from '../qemu/sandbox.js';
import { StorageDaemon } from '../qemu/storage-daemon.js';
import { blockdevFiles, checkOpenedFiles } from '../qemu/opened-files.js';
import {
  assertQemuCanOpen,
  letQemuRead,
  letQemuThrough,
  ownHandleForQemu,
  prepareRunDir,
  qemuUser,
} from '../qemu/user.js';
import { unlinkBeneath, withBeneath } from '../storage/beneath.js';
import { poolOf, type PoolDef } from '../storage/pools.js';
import type { Accelerator } from '../qemu/accel.js';
import type { RunState } from '../qemu/commands.js';
import { openBootFiles } from './boot-files.js';
import { parseVmSpec, resolveVmFile, type DiskSpec, type VmSpec } from './spec.js';
import { configFile, exists, saveVm } from './folder.js';
import { copyImage, type ProbedImage } from './image.js';

export interface VmRuntimePaths {
  runDir: string;
  qmpSocket: string;
  adminSocket: string;
  serialLog: string;
  /** The serial port (read-write console); QEMU also copies its output to serialLog. */
  serialSocket: string;
  /** The VNC display of a VM with a screen. */
  vncSocket: string;
  pidFile: string;
}

/** Per-VM runtime files on this host (sockets, pid, serial log): not part of the VM's folder. */
export function runtimePaths(runDir: string): VmRuntimePaths {
  return {
    runDir,
    qmpSocket: path.join(runDir, 'qmp.sock'),
    adminSocket: path.join(runDir, 'qmp-admin.sock'),
    serialLog: path.join(runDir, 'serial.log'),
    serialSocket: path.join(runDir, 'serial.sock'),
    vncSocket: path.join(runDir, 'vnc.sock'),
    pidFile: path.join(runDir, 'qemu.pid'),
  };
}

export interface CreateVmOptions {
  /** Disks to create empty: disk id → virtual size in bytes. Other disks must exist. */
  createDisks?: Record<string, number>;
  /** Files copied into the VM folder before it is checked (e.g. a guest kernel). */
  copyIn?: Array<{ from: string; to: string }>;
  /** Extra bytes written into the VM folder (e.g. a generated boot image): relative name → content. */
  writeIn?: Record<string, Buffer>;
  /** Disks made as copies of probed images (`--image`): disk id → image, grown to sizeBytes. */
  importDisks?: Record<string, { image: ProbedImage; sizeBytes?: number }>;
  /** This host's pools: an imported image's files are read through handles opened without links. */
  pools?: readonly PoolDef[];
  signal?: AbortSignal;
}

/** A file createVm makes that is already there (or a link is): named, nothing overwritten. */
const taken =
  (spec: VmSpec, file: string) =>
  (err: unknown): never => {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    throw new InvalidInputError(
      `Cannot create the VM '${spec.name}': ${file} already exists; remove it or choose another folder`,
      { path: file },
    );
  };

/**
 * Creates a VM: its folder, vm.json, and any new disks. Everything is checked before the
 * first file is written; a failure part-way removes what this call created.
 */
export async function createVm(input: unknown, opts: CreateVmOptions = {}): Promise<VmSpec> {
  const spec = parseVmSpec(input, 'create the VM');
  const create = opts.createDisks ?? {};
  for (const [id, size] of Object.entries(create)) {
    if (!spec.disks.some((d) => d.id === id))
      throw new InvalidInputError(`Cannot create the VM '${spec.name}': no disk with id '${id}' to create`, {
        disk: id,
      });
    if (!Number.isSafeInteger(size) || size < 512 || size % 512 !== 0) {
      throw new InvalidInputError(
        `Cannot create disk '${id}' of VM '${spec.name}': size ${size} is not a positive multiple of 512 bytes; ` +
          'give a size such as 64M or 10G',
        { disk: id, size },
      );
    }
  }
  if (await exists(configFile(spec.configPath))) {
    throw new FerryError(
      'E_VM_EXISTS',
      `Cannot create the VM '${spec.name}': ${spec.configPath} already holds a VM; ` +
        'choose another --path or remove that VM',
      { context: { configPath: spec.configPath } },
    );
  }
  const inFolder = new Set([
    ...(opts.copyIn ?? []).map((c) => resolveVmFile(spec, c.to)),
    ...Object.keys(opts.writeIn ?? {}).map((n) => resolveVmFile(spec, n)),
  ]);
  const imported = opts.importDisks ?? {};
  for (const d of spec.disks) {
    const isNew = d.id in create || d.id in imported;
    const there = inFolder.has(d.path) || (await exists(d.path));
    if (isNew && there)
      throw new InvalidInputError(
        `Cannot create disk '${d.id}' of VM '${spec.name}': ${d.path} already exists; ` +
          'choose another path or attach it instead',
        { disk: d.id, path: d.path },
      );
    if (!isNew && !there)
      throw new NotFoundError(
        'E_DISK_NOT_FOUND',
        `Cannot create the VM '${spec.name}': disk image ${d.path} does not exist; create it or fix the path`,
        { disk: d.id, path: d.path },
      );
  }
  for (const c of opts.copyIn ?? []) {
    if (!(await exists(c.from)))
      throw new NotFoundError(
        'E_FILE_NOT_FOUND',
        `Cannot create the VM '${spec.name}': ${c.from} does not exist; ` +
          'run scripts/setup to build the test guests or fix the path',
        { path: c.from },
      );
  }
  await checkBootFiles(spec, inFolder);

  const created: string[] = [];
  const folderExisted = await exists(spec.configPath);
  try {
    await fsp.mkdir(spec.configPath, { recursive: true });
    if (!folderExisted) created.push(spec.configPath);
    for (const c of opts.copyIn ?? []) {
      const to = resolveVmFile(spec, c.to);
      // Exclusive (O_EXCL): nothing is written through a link someone left in the folder.
      await fsp.copyFile(c.from, to, fs.constants.COPYFILE_EXCL).catch(taken(spec, to));
      created.push(to);
    }
    for (const [name, data] of Object.entries(opts.writeIn ?? {})) {
      const to = resolveVmFile(spec, name);
      await fsp.writeFile(to, data, { flag: 'wx' }).catch(taken(spec, to));
      created.push(to);
    }
    for (const d of spec.disks) {
      const size = create[d.id];
      const from = imported[d.id];
      if (size === undefined && !from) continue;
      await fsp.mkdir(path.dirname(d.path), { recursive: true });
      const copyOpts = { format: d.format, signal: opts.signal, pools: opts.pools ?? [] };
      const fill = from
        ? (fd: number) => copyImage(from.image, d.path, { ...copyOpts, sizeBytes: from.sizeBytes, fd })
        : (fd: number) => createImage(d.path, d.format, size ?? 0, { fd, signal: opts.signal });
      if (opts.pools?.length)
        // Through its folder's handle, no link below the pool's root followed (migration/claim.ts).
        await claimFile(poolRoots(opts.pools), d.path, `disk '${d.id}' of VM '${spec.name}'`, {
          claimed: () => created.push(d.path),
          fill,
        });
      else {
        // Made here (O_EXCL): qemu-img never truncates what a link left at the path names.
        const fh = await fsp.open(d.path, 'wx').catch(taken(spec, d.path));
        created.push(d.path);
        try {
          await fill(fh.fd);
        } finally {
          await fh.close();
        }
      }
    }
    await saveVm(spec);
    return spec;
  } catch (err) {
    for (const p of created.reverse()) await fsp.rm(p, { recursive: true, force: true });
    await fsp.rm(configFile(spec.configPath), { force: true });
    throw err;
  }
}

async function checkBootFiles(spec: VmSpec, planned: Set<string>): Promise<void> {
  const files: Array<[string, string | undefined]> =
    spec.boot.kind === 'kernel'
      ? [
          ['boot.kernel', spec.boot.kernel],
          ['boot.initrd', spec.boot.initrd],
        ]
      : [];
  files.push(...spec.cdroms.map((c, i): [string, string] => [`cdroms.${i}.path`, c.path]));
  for (const [field, p] of files) {
    if (!p) continue;
    const abs = resolveVmFile(spec, p);
    if (!planned.has(abs) && !(await exists(abs))) {
      throw new NotFoundError(
        'E_FILE_NOT_FOUND',
        `Cannot use ${field} of VM '${spec.name}': ${abs} does not exist; ` +
          'fix the path (relative paths are inside the VM folder)',
        { field, path: abs },
      );
    }
  }
}

/**
 * When QEMU runs as its own user: the images it writes become that user's (also images made
 * or attached before the switch); it may pass through the VM's folder and the folders of its
 * files, never write them (vm.json stays root's); files of the VM's folder it only reads
 * (a copied kernel) become group-readable by it. Anything else it cannot reach is an error
 * that names the path, before QEMU starts.
 */
async function grantQemuFiles(spec: VmSpec, pools: readonly PoolDef[], chains?: DiskChains): Promise<void> {
  if (!qemuUser()) return;
  const what = `start VM '${spec.name}'`;
  const readOnly = [
    ...spec.disks.filter((d) => d.readOnly).map((d) => d.path),
    ...spec.cdroms.map((c) => resolveVmFile(spec, c.path)),
    ...(spec.boot.kind === 'kernel'
      ? [spec.boot.kernel, spec.boot.initrd].flatMap((f) => (f ? [resolveVmFile(spec, f)] : []))
      : []),
  ];
  const writable = spec.disks.filter((d) => !d.readOnly).map((d) => d.path);
  // The checkpoint layers QEMU opens read-write (a commit writes into them; argv.ts backingArgs).
  for (const layers of chains?.values() ?? []) writable.push(...layers.filter((c) => c.writable).map((c) => c.path));
  const own = (f: string): boolean => path.dirname(f) === spec.configPath;
  // Every change goes through a handle opened without links below a pool's root (beneath.ts).
  const roots = pools.map((p) => p.path);
  for (const dir of new Set([spec.configPath, ...[...writable, ...readOnly].map((f) => path.dirname(f))]))
    if ((await exists(dir)) && poolOf([...pools], dir))
      await withBeneath(roots, dir, 'dir', `the folder of VM '${spec.name}'`, letQemuThrough);
  for (const f of writable) {
    await withBeneath(roots, f, 'file', `a disk of VM '${spec.name}'`, ownHandleForQemu);
    await assertQemuCanOpen(f, 'rw', what);
  }
  for (const f of readOnly) {
    if (own(f)) await withBeneath(roots, f, 'file', `a file of VM '${spec.name}'`, letQemuRead);
    await assertQemuCanOpen(f, 'r', what);
  }
}

/**
 * A stopped VM's disks `diskIds` opened by a disk daemon (QEMU without a guest) for a copy (storage-daemon.ts):
 * the files handed to QEMU's user as for a start, the nodes QEMU's own (checked chains pinned).
 */
export async function openDisksForCopy(
  spec: VmSpec,
  diskIds: readonly string[],
  opts: { dir: string; chains: DiskChains; pools: readonly PoolDef[]; host?: string; signal?: AbortSignal },
): Promise<StorageDaemon> {
  await grantQemuFiles(spec, opts.pools, opts.chains);
  const blockdevs = spec.disks
    .filter((d) => diskIds.includes(d.id))
    .flatMap((d) => diskBlockdevs(d, opts.chains.get(d.id) ?? [], d.cache === 'none' && supportsDirectIo(d.path)));
  const daemon = await StorageDaemon.start(spec.name, blockdevs, opts.dir, opts.signal ? { signal: opts.signal } : {});
  try {
    // As for a start (qemu/opened-files.ts): a copy must not read a file swapped in while the daemon opened it.
    const who = { vm: spec.name, host: opts.host ?? 'this host', signal: opts.signal };
    await checkOpenedFiles(daemon.pid, blockdevFiles(blockdevs), opts.pools, who);
  } catch (err) {
    await daemon.kill();
    throw err;
  }
  return daemon;
}

/** Whether the file system under `file` accepts O_DIRECT (tmpfs does not). */
export function supportsDirectIo(file: string): boolean {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'EINVAL';
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

export interface StartVmOptions {
  runDir: string;
  accel: Accelerator;
  incoming?: boolean;
  paused?: boolean;
  switches?: (nicId: string, switchName: string) => SwitchBackend;
  /** Smart Paging: the guest RAM's file (src/agent/paging-file.ts made it). */
  memoryFile?: string;
  /** The disks' checked backing chains (the agent's checkStorage), pinned into QEMU's nodes. */
  chains?: DiskChains;
  /** This host's pools: the files QEMU gets are handed to its user without following links below them. */
  pools: readonly PoolDef[];
  /** This host's name, for the messages. */
  host?: string;
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** Starts QEMU for a VM. Files are checked first so a missing disk or kernel is named. */
export async function startVm(spec: VmSpec, opts: StartVmOptions): Promise<QemuProcess> {
  for (const d of spec.disks) {
    if (!(await exists(d.path))) {
      throw new NotFoundError(
        'E_DISK_NOT_FOUND',
        `Cannot start VM '${spec.name}': disk '${d.id}' image ${d.path} does not exist; ` +
          'restore it or remove the disk from the VM',
        { disk: d.id, path: d.path },
      );
    }
  }
  await checkBootFiles(spec, new Set());
  // Before anything is changed for the start (files handed to QEMU's user, the console rotated):
  // a refused boot file leaves everything as it was.
  const boot = await openBootFiles(spec, opts.pools, opts.host ?? 'this host', { signal: opts.signal });
  try {
    await ensureSandbox({ signal: opts.signal });
    await grantQemuFiles(spec, opts.pools, opts.chains);
    const paths = runtimePaths(opts.runDir);
    await prepareRunDir(opts.runDir);
    // Keep the previous boot's console as serial.log.1; a migration target appends to a fresh log.
    if (!opts.incoming && (await exists(paths.serialLog))) await fsp.rename(paths.serialLog, paths.serialLog + '.1');
    const argv = buildArgv(spec, {
      accel: opts.accel,
      paths,
      incoming: opts.incoming,
      // Always paused at first: the guest runs only once QEMU's disks are the files checked.
      paused: true,
      switches: opts.switches,
      directIo: (d: DiskSpec) => supportsDirectIo(d.path),
      fileAs: boot.nameOf,
      ...(opts.memoryFile ? { memoryFile: opts.memoryFile } : {}),
      ...(opts.chains ? { chains: opts.chains } : {}),
    });
    await fsp.writeFile(path.join(opts.runDir, 'argv.json'), JSON.stringify(argv));
    const proc = await QemuProcess.spawn(argv, {
      vm: spec.name,
      runDir: opts.runDir,
      qmpSocket: paths.qmpSocket,
      pidFile: paths.pidFile,
      signal: opts.signal,
      timeoutMs: opts.timeoutMs,
      passFds: boot.fds,
    });
    try {
      const who = { vm: spec.name, host: opts.host ?? 'this host', signal: opts.signal };
      await checkOpenedFiles(proc.pid, blockdevFiles(argv), opts.pools, who);
      if (!opts.incoming && !opts.paused)
        await proc.qmp.execute('cont', undefined, { signal: opts.signal, timeoutMs: 5000 });
    } catch (err) {
      await proc.kill();
      throw err;
    }
    return proc;
  } finally {
    await boot.close(); // QEMU holds its own copies
  }
}

export interface StopVmOptions {
  /** Power off at once (QMP quit: QEMU flushes and exits) instead of an ACPI power-down. */
  force?: boolean;
  /** How long the guest gets to power itself off before it is forced (default 30 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export async function stopVm(
  proc: QemuProcess,
  opts: StopVmOptions = {},
): Promise<{ graceful: boolean; exit: ExitInfo }> {
  if (!opts.force && !proc.hasExited) {
    try {
      const st = await proc.qmp.execute('query-status', undefined, { signal: opts.signal, timeoutMs: 5000 });
      if (!st.running) await proc.qmp.execute('cont', undefined, { signal: opts.signal, timeoutMs: 5000 });
      await proc.qmp.execute('system_powerdown', undefined, { signal: opts.signal, timeoutMs: 5000 });
      const exit = await proc.waitExit(opts.timeoutMs ?? 30_000, opts.signal);
      return { graceful: true, exit };
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      // Did not power off in time: fall through to a forced stop.
    }
  }
  return { graceful: false, exit: await proc.quit({ timeoutMs: 10_000 }) };
}

export async function pauseVm(proc: QemuProcess, opts: { signal?: AbortSignal } = {}): Promise<void> {
  await proc.qmp.execute('stop', undefined, opts);
}

export async function resumeVm(proc: QemuProcess, opts: { signal?: AbortSignal } = {}): Promise<void> {
  await proc.qmp.execute('cont', undefined, opts);
}

export type VmState = 'running' | 'paused' | 'stopped' | 'migrating';

/** The VM's state as users see it, from QEMU's run state. */
export async function vmState(
  proc: QemuProcess | null,
  opts: { signal?: AbortSignal } = {},
): Promise<{ state: VmState; qemu: RunState | null }> {
  if (!proc || proc.hasExited || proc.qmp.isClosed) return { state: 'stopped', qemu: null };
  const st = await proc.qmp.execute('query-status', undefined, { signal: opts.signal, timeoutMs: 5000 });
  const map: Partial<Record<RunState, VmState>> = {
    running: 'running',
    inmigrate: 'migrating',
    'finish-migrate': 'migrating',
    postmigrate: 'paused',
    shutdown: 'stopped',
  };
  return { state: map[st.status] ?? (st.running ? 'running' : 'paused'), qemu: st.status };
}

/**
 * Removes a stopped VM: vm.json and the guest files inside its folder; the disk images it
 * created only with `deleteDisks`, and images it did not create (attached, imported in place)
 * only with `deleteExternal`. Folders are removed only when empty, so user data is never swept away.
 */
export async function removeVm(
  spec: VmSpec,
  opts: { deleteDisks?: boolean; deleteExternal?: boolean; pools: readonly PoolDef[] },
): Promise<void> {
  const roots = opts.pools.map((p) => p.path);
  for (const d of spec.disks) {
    // The variable store is the VM's own settings, never shared: it goes with the VM.
    const del = d.role === 'uefi-vars' || (d.external ? opts.deleteExternal : opts.deleteDisks);
    // Through its folder's handle: a link planted above the image cannot redirect the delete.
    if (del) await unlinkBeneath(roots, d.path, `disk ${d.id} of VM '${spec.name}'`);
  }
  const own = [...spec.cdroms.map((c) => c.path)];
  if (spec.boot.kind === 'kernel') own.push(...[spec.boot.kernel, spec.boot.initrd].flatMap((p) => (p ? [p] : [])));
  for (const p of own)
    if (!path.isAbsolute(p)) await unlinkBeneath(roots, resolveVmFile(spec, p), `a file of VM '${spec.name}'`);
  await unlinkBeneath(roots, configFile(spec.configPath), `the configuration of VM '${spec.name}'`);
  for (const dir of new Set([spec.checkpointPath, spec.pagingPath, spec.configPath])) {
    try {
      await fsp.rmdir(dir);
    } catch {
      /* not empty or gone: leave it */
    }
  }
}
