// This host as others see it: its migration settings (`ferry host set`: limits, migration
// networks, TLS, on/off), its capabilities (CPU, accelerator, QEMU, memory, CPU models), the
// host view, and the address it receives migrations on.
import os from 'node:os';
import type { z } from 'zod';
import { FerryError } from '../errors.js';
import { DEFAULTS } from '../api/defaults.js';
import type { Emit } from '../api/events.js';
import type { HostSetBody, HostView, MigrationSettings } from '../api/schemas.js';
import { detectAccelerator, type AccelProbe, type Accelerator } from '../qemu/accel.js';
import { usableCpuModels, type CpuModelInfo } from '../qemu/cpu-models.js';
import { addressInNetworks } from '../util/cidr.js';
import { roomForVms } from '../vm/memory-backing.js';
import { cpuInfo, memoryInfo, qemuInfo } from './capabilities.js';
import type { Registry } from './registry.js';
import type { Pools } from './pools.js';
import type { Switches } from './switches.js';

const AGENT_VERSION = '0.1.0';
/** Memory kept for the host itself when counting what VMs may use. */
const HOST_RESERVE_BYTES = 512 * 1024 * 1024;
const MiB = 1024 * 1024;

/** What the host view counts of the VMs here. */
export interface VmUsage {
  /** VMs registered here. */
  count: number;
  /** Memory assigned to the running ones in ordinary RAM. */
  runningBytes: number;
  /** Memory of the running ones backed by a paging file (Smart Paging). */
  pagingBytes: number;
}

export interface HostSettingsDeps {
  name: string;
  domainId: string;
  /** The agent's --migration-address (used when no migration network is set). */
  migrationAddress: string;
  /** The agent's migration port range (FROM-TO), published so a source can check what Prepare answers. */
  migrationPorts: string | null;
  registry: Registry;
  emit: Emit;
  pools: Pools;
  switches: Switches;
  vmUsage: () => Promise<VmUsage>;
}

export class HostSettings {
  private accel: AccelProbe | null = null;
  private listeners: Array<() => void> = [];

  constructor(private readonly d: HostSettingsDeps) {}

  /** Probes the accelerator (KVM only if it really runs a guest, else TCG). */
  async probe(opts: { signal?: AbortSignal } = {}): Promise<void> {
    this.accel = await detectAccelerator({ signal: opts.signal });
  }

  accelerator(): Accelerator {
    return this.accel?.accel ?? 'tcg';
  }

  cpuModels(): Promise<CpuModelInfo[]> {
    return usableCpuModels(this.accelerator());
  }

  migration(): MigrationSettings {
    const s = this.d.registry.getSetting<Partial<MigrationSettings>>('migration', {});
    return {
      enabled: s.enabled ?? true,
      maxLive: s.maxLive ?? DEFAULTS.maxLive,
      maxStorage: s.maxStorage ?? DEFAULTS.maxStorage,
      networks: s.networks ?? [],
      tls: s.tls ?? true,
      memoryStreams: s.memoryStreams ?? 1,
      address: this.d.migrationAddress,
      ports: this.d.migrationPorts,
    };
  }

  /** `ferry host set --max-vm-memory`: the total memory of the VMs this host runs in RAM (null: no limit). */
  maxVmMemoryMiB(): number | null {
    return this.d.registry.getSetting<{ maxVmMiB?: number | null }>('memory', {}).maxVmMiB ?? null;
  }

  /** MiB a VM starting or arriving now may take in ordinary memory (Smart Paging decides on it). */
  async vmRoomMiB(): Promise<number> {
    const [mem, usage] = await Promise.all([memoryInfo(), this.d.vmUsage()]);
    return roomForVms({
      freeMiB: this.freeBytes(mem, usage) / MiB,
      maxVmMiB: this.maxVmMemoryMiB(),
      vmMiB: usage.runningBytes / MiB,
    });
  }

  /**
   * Free for VMs: what the kernel has available, but never more than what is not already
   * assigned to running VMs (QEMU allocates guest RAM lazily; a guest may touch all of it),
   * nor than what --max-vm-memory leaves.
   */
  private freeBytes(mem: { totalBytes: number; freeBytes: number }, usage: VmUsage): number {
    const max = this.maxVmMemoryMiB();
    const limit = max === null ? Infinity : max * MiB - usage.runningBytes;
    return Math.max(0, Math.min(mem.freeBytes, mem.totalBytes - HOST_RESERVE_BYTES - usage.runningBytes, limit));
  }

  /** Called after every change of the settings (e.g. to start moves a higher limit now admits). */
  onChange(fn: () => void): void {
    this.listeners.push(fn);
  }

  async set(body: z.infer<typeof HostSetBody>): Promise<HostView> {
    const next: MigrationSettings = {
      ...this.migration(),
      ...(body.maxLive !== undefined ? { maxLive: body.maxLive } : {}),
      ...(body.maxStorage !== undefined ? { maxStorage: body.maxStorage } : {}),
      ...(body.migrationNetworks !== undefined ? { networks: body.migrationNetworks } : {}),
      ...(body.tls !== undefined ? { tls: body.tls } : {}),
      ...(body.memoryStreams !== undefined ? { memoryStreams: body.memoryStreams } : {}),
      ...(body.enabled !== undefined ? { enabled: body.enabled } : {}),
    };
    const { address: _address, ports: _ports, ...stored } = next;
    this.d.registry.setSetting('migration', stored);
    if (body.maxVmMemoryMiB !== undefined) this.d.registry.setSetting('memory', { maxVmMiB: body.maxVmMemoryMiB });
    this.d.emit('host.changed', { migration: next });
    for (const fn of this.listeners) fn();
    return this.view();
  }

  async view(): Promise<HostView> {
    const [cpu, mem, qemu, usage, pools] = await Promise.all([
      cpuInfo(),
      memoryInfo(),
      qemuInfo(),
      this.d.vmUsage(),
      this.d.pools.views(),
    ]);
    const maxVm = this.maxVmMemoryMiB();
    return {
      name: this.d.name,
      domainId: this.d.domainId,
      agentVersion: AGENT_VERSION,
      cpu,
      accelerator: { name: this.accelerator(), reason: this.accel?.reason ?? 'not probed' },
      qemu,
      memory: {
        totalBytes: mem.totalBytes,
        freeBytes: this.freeBytes(mem, usage),
        vmBytes: usage.runningBytes,
        maxVmBytes: maxVm === null ? null : maxVm * MiB,
        pagingBytes: usage.pagingBytes,
      },
      pools,
      switches: this.d.switches.list(),
      migration: this.migration(),
      vms: usage.count,
    };
  }

  /**
   * Where this host listens for migration streams: an address of its own inside the
   * configured migration networks (one facing `peer` first, when given), else the agent's
   * --migration-address.
   */
  migrationListenAddress(peer?: string): string {
    const nets = this.migration().networks;
    if (!nets.length) return this.d.migrationAddress;
    const own = Object.values(os.networkInterfaces()).flatMap((list) =>
      (list ?? []).filter((a) => a.family === 'IPv4').map((a) => a.address),
    );
    const addr = addressInNetworks(own, nets, peer);
    if (addr !== null) return addr;
    throw new FerryError(
      'E_MIGRATION_NETWORK',
      `Cannot receive a migration on host '${this.d.name}': ` +
        `none of its addresses is in its migration networks (${nets.join(', ')}); its migration link may be ` +
        `down: check it, or fix the networks with 'ferry host set ${this.d.name} --migration-network CIDR'`,
      {},
    );
  }
}
