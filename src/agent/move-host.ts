// The agent as the host a move runs on (src/migration/host.ts): an adapter over the VM
// inventory, the host settings, the pools, the cluster node and the registry, which keeps
// migration records and the move journal. Migration code sees only this interface.
import type { Emit } from '../api/events.js';
import type { HostView, MigrationSettings } from '../api/schemas.js';
import type { EventBus } from '../events/bus.js';
import type { MoveCluster, MoveHost, MoveStore, MoveVms, PortLease, TlsFiles } from '../migration/host.js';
import type { Accelerator } from '../qemu/accel.js';
import type { CpuModelInfo } from '../qemu/cpu-models.js';
import type { PoolDef } from '../storage/pools.js';
import type { ClusterNode } from '../cluster/node.js';
import type { HostSettings } from './host-settings.js';
import type { Pools } from './pools.js';
import type { Registry } from './registry.js';
import type { VmInventory } from './vms.js';
import { advertisedMigrationAddress } from './migration-address.js';
import type { PortAllocator } from './ports.js';

export interface MoveHostParts {
  name: string;
  domainId: string;
  dataDir: string;
  tls: TlsFiles;
  events: EventBus;
  registry: Registry;
  vms: VmInventory;
  settings: HostSettings;
  pools: Pools;
  cluster: ClusterNode;
  ports: PortAllocator;
}

export class AgentMoveHost implements MoveHost {
  readonly name: string;
  readonly domainId: string;
  readonly dataDir: string;
  readonly tls: TlsFiles;
  readonly emit: Emit;
  readonly vms: MoveVms;
  /** The registry: sqlite with synchronous = FULL, so a journal entry is on disk when append returns. */
  readonly store: MoveStore;

  constructor(private readonly p: MoveHostParts) {
    this.name = p.name;
    this.domainId = p.domainId;
    this.dataDir = p.dataDir;
    this.tls = p.tls;
    this.emit = (type, fields) => {
      p.events.emit(type, fields);
    };
    this.vms = p.vms;
    this.store = p.registry;
  }

  cluster(): MoveCluster | null {
    return this.p.cluster.joined ? this.p.cluster : null;
  }

  settings(): MigrationSettings {
    return this.p.settings.migration();
  }

  accelerator(): Accelerator {
    return this.p.settings.accelerator();
  }

  pools(): PoolDef[] {
    return this.p.pools.list();
  }

  hostView(): Promise<HostView> {
    return this.p.settings.view();
  }

  cpuModels(): Promise<CpuModelInfo[]> {
    return this.p.settings.cpuModels();
  }

  migrationListenAddress(peer?: string, localAddress?: string): string {
    return advertisedMigrationAddress(this.p.settings.migrationListenAddress(peer), localAddress, this.name);
  }

  migrationPort(address: string, opts: { signal?: AbortSignal }): Promise<PortLease> {
    return this.p.ports.allocate(address, opts);
  }

  runDir(vmId: string): string {
    return this.p.vms.runDir(vmId);
  }
}
