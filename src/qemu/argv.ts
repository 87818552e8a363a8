// VM spec → QEMU argv. Both ends of a migration run this same function on the same spec,
// so the device layout (ids, PCI slots, node names, RAM size) is identical on every host:
// QEMU itself does not check it (a CPU model or an extra device mismatch "migrates").
import type { VmSpec, DiskSpec } from '../vm/spec.js';
import { resolveVmFile } from '../vm/spec.js';
import type { Accelerator } from './accel.js';

export interface RuntimePaths {
  qmpSocket: string;
  /** A second monitor for people and tests (the agent holds the first). */
  adminSocket?: string;
  serialLog: string;
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
}

// Fixed PCI slots: disks from 0x04, NICs from 0x14; i440fx uses 0x00–0x01 itself.
const DISK_SLOT_BASE = 0x04;
const NIC_SLOT_BASE = 0x14;

export function nodeNames(disk: Pick<DiskSpec, 'id'>): { file: string; format: string } {
  return { file: `${disk.id}-file`, format: disk.id };
}

export function buildArgv(spec: VmSpec, opts: LaunchOptions): string[] {
  const a: string[] = [
    '-name',
    `guest=${spec.name},debug-threads=on`,
    '-uuid',
    spec.id,
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-machine',
    spec.machine,
    '-accel',
    opts.accel,
    '-cpu',
    spec.cpuModel,
    '-m',
    `${spec.memoryMiB}M`,
    '-smp',
    String(spec.cpus),
    '-rtc',
    'base=utc',
    '-qmp',
    `unix:${opts.paths.qmpSocket},server=on,wait=off`,
    ...(opts.paths.adminSocket ? ['-qmp', `unix:${opts.paths.adminSocket},server=on,wait=off`] : []),
    '-chardev',
    `file,id=serial0,path=${opts.paths.serialLog},append=on`,
    '-serial',
    'chardev:serial0',
    '-pidfile',
    opts.paths.pidFile,
    '-msg',
    'timestamp=on',
  ];
  let ide = 0;
  spec.disks.forEach((d, i) => {
    const n = nodeNames(d);
    const direct = d.cache === 'none' && (opts.directIo?.(d) ?? true);
    const cache = { direct, 'no-flush': false };
    a.push(
      '-blockdev',
      JSON.stringify({
        driver: 'file',
        filename: d.path,
        'node-name': n.file,
        cache,
        'read-only': d.readOnly,
        'auto-read-only': false,
      }),
    );
    a.push(
      '-blockdev',
      JSON.stringify({ driver: d.format, file: n.file, 'node-name': n.format, cache, 'read-only': d.readOnly }),
    );
    const boot = spec.boot.kind === 'disk' && i === 0 ? ',bootindex=0' : '';
    if (d.bus === 'ide') {
      a.push('-device', `ide-hd,drive=${n.format},id=${d.id},bus=ide.${Math.floor(ide / 2)},unit=${ide % 2}${boot}`);
      ide++;
    } else {
      a.push(
        '-device',
        `virtio-blk-pci,drive=${n.format},id=${d.id},bus=pci.0,addr=0x${(DISK_SLOT_BASE + i).toString(16)}${boot}`,
      );
    }
  });
  spec.nics.forEach((nic, i) => {
    const be = opts.switches?.(nic.id, nic.switch) ?? { kind: 'user' as const };
    const netdev =
      be.kind === 'user'
        ? `user,id=net-${nic.id},restrict=on`
        : `tap,id=net-${nic.id},ifname=${be.tap},script=no,downscript=no`;
    a.push('-netdev', netdev);
    const slot = (NIC_SLOT_BASE + i).toString(16);
    a.push('-device', `virtio-net-pci,netdev=net-${nic.id},id=${nic.id},mac=${nic.mac},bus=pci.0,addr=0x${slot}`);
  });
  if (spec.boot.kind === 'kernel') {
    a.push('-kernel', resolveVmFile(spec, spec.boot.kernel));
    if (spec.boot.initrd) a.push('-initrd', resolveVmFile(spec, spec.boot.initrd));
    if (spec.boot.append) a.push('-append', spec.boot.append);
  }
  if (opts.incoming) a.push('-S', '-incoming', 'defer');
  else if (opts.paused) a.push('-S');
  return a;
}
