// VM spec → QEMU argv. Both ends of a migration run this same function on the same spec,
// so the device layout (ids, PCI slots, node names, RAM size) is identical on every host:
// QEMU itself does not check it (a CPU model or an extra device mismatch "migrates").
import type { VmSpec, DiskSpec } from '../vm/spec.js';
import { resolveVmFile } from '../vm/spec.js';
import type { Accelerator } from './accel.js';
import { ovmfPaths, pflashArgs, type OvmfPaths } from './firmware.js';
import { SANDBOX_ARGS } from './sandbox.js';

export interface RuntimePaths {
  qmpSocket: string;
  /** A second monitor for people and tests (the agent holds the first). */
  adminSocket?: string;
  /** The guest's serial output, kept by QEMU whether or not anyone is attached. */
  serialLog: string;
  /** With it, the serial port is this Unix socket (read-write console) and QEMU also writes serialLog. */
  serialSocket?: string;
  /** The VNC display of a VM with a screen (never a TCP port). */
  vncSocket?: string;
  pidFile: string;
}

/** How a host realises a named switch. */
export type SwitchBackend = { kind: 'user' } | { kind: 'bridge'; bridge: string; tap: string };

export interface LaunchOptions {
  accel: Accelerator;
  paths: RuntimePaths;
  /** Start paused, waiting for an incoming migration (`migrate-incoming` sets the URI). */
  incoming?: boolean;
  /** Resolves each NIC's switch on this host. */
  switches?: (nicId: string, switchName: string) => SwitchBackend;
  /** Per-disk: false when the file system can't do O_DIRECT (tmpfs), so cache.direct is dropped. */
  directIo?: (disk: DiskSpec) => boolean;
  /** Start with vCPUs stopped (-S) without an incoming migration. */
  paused?: boolean;
  /** This host's OVMF files (default: Debian's); only read for UEFI VMs. */
  ovmf?: OvmfPaths;
  /** Smart Paging: back the guest RAM with this file (created by the agent) instead of anonymous memory. */
  memoryFile?: string;
  /**
   * Each disk's checked backing chain (by disk id; the image itself first), pinned into the
   * -blockdev nodes so QEMU never opens a backing file named by an image's header. A disk with
   * a backing-capable format and no entry gets `backing: null`.
   */
  chains?: DiskChains;
  /**
   * QEMU's name for a kernel, initrd or CD-ROM image (its absolute path): the descriptor the
   * agent opened for it (src/vm/boot-files.ts). Without it, the path itself.
   */
  fileAs?: (abs: string) => string;
}

/**
 * A disk's image and the files below it, each with its probed format (src/vm/image.ts probes them).
 * `writable`: a layer of the VM's own checkpoints (or the disk under its first one), which a
 * checkpoint's removal commits or streams into while the VM runs.
 */
export type DiskChains = ReadonlyMap<string, ReadonlyArray<ChainLayer>>;
export interface ChainLayer {
  path: string;
  format: string;
  writable?: boolean;
}

/** Formats with a backing-file field, where `backing: null` stops QEMU from opening one. */
export const BACKING_FORMATS: ReadonlySet<string> = new Set(['qcow2', 'qcow', 'qed', 'vmdk']);

/**
 * The RAM of a VM backed by a file. The backend keeps the id of pc's and q35's default RAM
 * (pc.ram), so its RAM block has the name a normal QEMU's has and a live migration between
 * the two works. share=on: guest writes go to the file (with share=off they would land in
 * private anonymous pages and the file would back nothing); prealloc=off keeps it sparse.
 */
export function memoryFileArgs(memoryMiB: number, file: string): { object: string; machineProp: string } {
  return {
    object:
      `memory-backend-file,id=pc.ram,size=${memoryMiB}M,` +
      `mem-path=${file.replaceAll(',', ',,')},share=on,prealloc=off`,
    machineProp: 'memory-backend=pc.ram',
  };
}

// Fixed PCI slots: disks from 0x04, NICs from 0x14, the VGA card at 0x02, a q35 VM's
// cloud-init seed at 0x1c; i440fx uses 0x00–0x01 itself, q35 0x00 and 0x1f. On q35 each
// device sits behind its own PCIe root port in that slot (bus rpN), so a device keeps its
// address whatever else is added.
const DISK_SLOT_BASE = 0x04;
const NIC_SLOT_BASE = 0x14;
const VGA_SLOT = 0x02;
const SEED_SLOT = 0x1c;

export function nodeNames(disk: Pick<DiskSpec, 'id'>): { file: string; format: string } {
  return { file: `${disk.id}-file`, format: disk.id };
}

/** Is this query-block qdev the board's flash unit 1 (the UEFI variable store, `/machine/system.flash1`)? */
export function isVarsQdev(qdev: string | undefined): boolean {
  return /(^|[/.])flash1$/.test(qdev ?? '');
}

export function isQ35(machine: string): boolean {
  return machine.startsWith('pc-q35-');
}

export function buildArgv(spec: VmSpec, opts: LaunchOptions): string[] {
  const q35 = isQ35(spec.machine);
  const fileAs = opts.fileAs ?? ((abs: string): string => abs);
  const vars = spec.firmware === 'uefi' ? spec.disks.find((d) => d.role === 'uefi-vars') : undefined;
  const flash = vars
    ? pflashArgs(vars.path, opts.ovmf ?? ovmfPaths(), {
        varsNode: vars.id,
        direct: vars.cache === 'none' && (opts.directIo?.(vars) ?? true),
      })
    : null;
  const ramFile = opts.memoryFile ? memoryFileArgs(spec.memoryMiB, opts.memoryFile) : null;
  const a: string[] = [
    '-name',
    `guest=${spec.name},debug-threads=on`,
    '-uuid',
    spec.id,
    '-nodefaults',
    '-no-user-config',
    // Seccomp: no exec, no privilege or scheduling changes (src/qemu/sandbox.ts).
    ...SANDBOX_ARGS,
    '-display',
    'none',
    '-machine',
    [spec.machine, ...(flash?.machineProps ?? []), ...(ramFile ? [ramFile.machineProp] : [])].join(','),
    '-accel',
    opts.accel,
    '-cpu',
    spec.cpuModel,
    '-m',
    `${spec.memoryMiB}M`,
    ...(ramFile ? ['-object', ramFile.object] : []),
    '-smp',
    String(spec.cpus),
    '-rtc',
    'base=utc',
    '-qmp',
    `unix:${opts.paths.qmpSocket},server=on,wait=off`,
    ...(opts.paths.adminSocket ? ['-qmp', `unix:${opts.paths.adminSocket},server=on,wait=off`] : []),
    '-chardev',
    opts.paths.serialSocket
      ? `socket,id=serial0,path=${opts.paths.serialSocket},server=on,wait=off,` +
        `logfile=${opts.paths.serialLog},logappend=on`
      : `file,id=serial0,path=${opts.paths.serialLog},append=on`,
    '-serial',
    'chardev:serial0',
    '-pidfile',
    opts.paths.pidFile,
    '-msg',
    'timestamp=on',
    ...(flash?.blockdevs ?? []),
  ];
  const bootIndex = bootIndexes(spec);
  const boot = (id: string): string => (bootIndex.has(id) ? `,bootindex=${bootIndex.get(id)}` : '');
  /** The bus and address of a PCI device in `slot`: on q35 behind a root port of its own. */
  const pciAt = (slot: number): string => {
    const addr = `0x${slot.toString(16)}`;
    if (!q35) return `bus=pci.0,addr=${addr}`;
    const port = `rp${slot}`;
    a.push('-device', `pcie-root-port,id=${port},bus=pcie.0,addr=${addr},chassis=${slot},port=${slot}`);
    return `bus=${port},addr=0x0`;
  };
  // IDE (pc: 2 buses × 2 units) or AHCI (q35: 6 ports × 1 unit): disks on bus ide first, then CD-ROMs.
  let ide = 0;
  const nextIde = (): string => {
    const at = q35 ? `bus=ide.${ide},unit=0` : `bus=ide.${Math.floor(ide / 2)},unit=${ide % 2}`;
    ide++;
    return at;
  };
  if (spec.display === 'vga') a.push('-device', `VGA,id=video0,${q35 ? 'bus=pcie.0' : 'bus=pci.0'},addr=0x${VGA_SLOT}`);
  spec.disks.forEach((d, i) => {
    if (d.role === 'uefi-vars') return;
    const n = nodeNames(d);
    const direct = d.cache === 'none' && (opts.directIo?.(d) ?? true);
    for (const b of diskBlockdevs(d, opts.chains?.get(d.id) ?? [], direct)) a.push('-blockdev', b);
    if (d.bus === 'ide') a.push('-device', `ide-hd,drive=${n.format},id=${d.id},${nextIde()}${boot(d.id)}`);
    else a.push('-device', `virtio-blk-pci,drive=${n.format},id=${d.id},${pciAt(DISK_SLOT_BASE + i)}${boot(d.id)}`);
  });
  for (const c of spec.cdroms) {
    const n = nodeNames(c);
    const file = fileAs(resolveVmFile(spec, c.path));
    a.push(
      '-blockdev',
      JSON.stringify({ driver: 'file', filename: file, 'node-name': n.file, 'read-only': true }),
      '-blockdev',
      JSON.stringify({ driver: 'raw', file: n.file, 'node-name': n.format, 'read-only': true }),
      '-device',
      // q35's CD-ROMs sit on AHCI, which cloud kernels (Debian's cloud-amd64) lack: there the
      // seed is a read-only virtio disk, which cloud-init finds by its label just the same.
      q35 && c.role === 'cloud-init'
        ? `virtio-blk-pci,drive=${n.format},id=${c.id},${pciAt(SEED_SLOT)}`
        : `ide-cd,drive=${n.format},id=${c.id},${nextIde()}${boot(c.id)}`,
    );
  }
  spec.nics.forEach((nic, i) => {
    const be = opts.switches?.(nic.id, nic.switch) ?? { kind: 'user' as const };
    const netdev =
      be.kind === 'user'
        ? `user,id=net-${nic.id},restrict=on`
        : `tap,id=net-${nic.id},ifname=${be.tap},script=no,downscript=no`;
    a.push('-netdev', netdev);
    a.push(
      '-device',
      `virtio-net-pci,netdev=net-${nic.id},id=${nic.id},mac=${nic.mac},${pciAt(NIC_SLOT_BASE + i)}${boot(nic.id)}`,
    );
  });
  if (spec.display === 'vga' && opts.paths.vncSocket) a.push('-vnc', `unix:${opts.paths.vncSocket}`);
  if (spec.boot.kind === 'kernel') {
    a.push('-kernel', fileAs(resolveVmFile(spec, spec.boot.kernel)));
    if (spec.boot.initrd) a.push('-initrd', fileAs(resolveVmFile(spec, spec.boot.initrd)));
    if (spec.boot.append) a.push('-append', spec.boot.append);
  }
  if (opts.incoming) a.push('-S', '-incoming', 'defer');
  else if (opts.paused) a.push('-S');
  return a;
}

/**
 * The -blockdev values (JSON) of a disk: its file node, the read-only nodes of the checked
 * chain below it (pinned: QEMU reads no backing name from a header), then its format node
 * (`nodeNames`). Also what the disk daemon opens for a stopped VM's copy (storage-daemon.ts).
 */
export function diskBlockdevs(d: DiskSpec, chain: ReadonlyArray<ChainLayer>, direct: boolean): string[] {
  const n = nodeNames(d);
  const cache = { direct, 'no-flush': false };
  const a: string[] = [];
  a.push(
    JSON.stringify({
      driver: 'file',
      filename: d.path,
      'node-name': n.file,
      cache,
      'read-only': d.readOnly,
      'auto-read-only': false,
    }),
  );
  const backing = backingArgs(a, d, chain, cache);
  a.push(
    JSON.stringify({
      driver: d.format,
      file: n.file,
      'node-name': n.format,
      cache,
      'read-only': d.readOnly,
      ...backing,
    }),
  );
  return a;
}

/**
 * Pushes (JSON) read-only nodes for the files below a disk's image, bottom first (`<id>-b<k>`), and
 * returns the `backing` option of the disk's own format node. A writable layer's file is opened
 * read-write from the start: QEMU would otherwise reopen it by path when a commit or stream
 * writes into it, and whoever writes the pool could have swapped a link in by then (the agent
 * checked the file QEMU opened at start, qemu/opened-files.ts). Other layers (a template
 * another VM may share, a read-only file) stay read-only until something needs to write them.
 */
function backingArgs(
  a: string[],
  d: DiskSpec,
  chain: ReadonlyArray<ChainLayer>,
  cache: { direct: boolean; 'no-flush': boolean },
): { backing?: string | null } {
  let below: string | null = null;
  for (const [k, c] of [...chain.entries()].reverse()) {
    if (k === 0) break; // the disk's own image: the caller's node
    const node = `${d.id}-b${k}`;
    a.push(
      JSON.stringify({
        driver: 'file',
        filename: c.path,
        'node-name': `${node}-file`,
        cache,
        ...(c.writable ? { 'read-only': false, 'auto-read-only': false } : { 'auto-read-only': true }),
      }),
      JSON.stringify({
        driver: c.format,
        file: `${node}-file`,
        'node-name': node,
        cache,
        'read-only': true,
        ...(BACKING_FORMATS.has(c.format) ? { backing: below } : {}),
      }),
    );
    below = node;
  }
  return BACKING_FORMATS.has(d.format) ? { backing: below } : {};
}

/** Device id → bootindex: the spec's boot order, else (older VMs) the first disk when booting from disk. */
function bootIndexes(spec: VmSpec): Map<string, number> {
  if (spec.bootOrder) return new Map(spec.bootOrder.map((id, i): [string, number] => [id, i]));
  const first = spec.disks.find((d) => d.role !== 'uefi-vars');
  return new Map<string, number>(spec.boot.kind === 'disk' && first ? [[first.id, 0]] : []);
}
