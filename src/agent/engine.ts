// The agent's parts, put together: the registry, the event stream, pools, switches, host
// settings, the VM inventory, the cluster node and the moves (outgoing, incoming, and their
// slots). It starts them in order and stops them; what each does lives in its own module.
// Stopping the agent never stops a VM.
import path from 'node:path';
import { EventBus } from '../events/bus.js';
import type { Emit } from '../api/events.js';
import { ClusterNode } from '../cluster/node.js';
import { MigrationManager } from '../migration/manager.js';
import type { AgentConfig } from './config.js';
import { HostSettings } from './host-settings.js';
import { portAllocatorFor } from './ports.js';
import { AgentMoveHost } from './move-host.js';
import { Pools } from './pools.js';
import { Registry } from './registry.js';
import { Switches } from './switches.js';
import { VmInventory } from './vms.js';

export class Engine {
  readonly events = new EventBus();
  readonly registry: Registry;
  readonly pools: Pools;
  readonly switches: Switches;
  readonly settings: HostSettings;
  readonly vms: VmInventory;
  readonly cluster: ClusterNode;
  /** What moves see of this host. */
  readonly host: AgentMoveHost;
  readonly migrations: MigrationManager;

  constructor(
    readonly cfg: AgentConfig,
    readonly domainId: string,
  ) {
    const name = cfg.name;
    const emit: Emit = (type, fields) => {
      this.events.emit(type, fields);
    };
    this.registry = new Registry(path.join(cfg.dataDir, 'ferry.db'));
    this.pools = new Pools(name, this.registry, emit);
    this.switches = new Switches(name, this.registry, emit);
    this.settings = new HostSettings({
      name,
      domainId,
      migrationAddress: cfg.migrationAddress,
      migrationPorts: cfg.migrationPorts ? `${cfg.migrationPorts.from}-${cfg.migrationPorts.to}` : null,
      registry: this.registry,
      emit,
      pools: this.pools,
      switches: this.switches,
      vmUsage: () => this.vms.usage(),
    });
    this.vms = new VmInventory({
      host: name,
      dataDir: cfg.dataDir,
      registry: this.registry,
      emit,
      pools: this.pools,
      switches: this.switches,
      settings: this.settings,
      cluster: {
        recordHa: (spec) => this.cluster.recordHa(spec),
        mayBoot: (spec, opts) => this.cluster.mayBoot(spec, opts),
        guestStopped: (vm) => this.cluster.guestStopped(vm),
        crashed: (vm) => this.cluster.crashed(vm),
        forgetVm: (vm) => this.cluster.forgetVm(vm),
        specChanged: (spec) => this.cluster.specChanged(spec),
      },
    });
    this.cluster = new ClusterNode({
      name,
      endpoint: endpointOf(cfg.listen),
      dataDir: cfg.dataDir,
      tls: cfg.tls,
      events: this.events,
      vms: this.vms,
      pools: () => this.pools.list(),
    });
    this.host = new AgentMoveHost({
      name,
      domainId,
      dataDir: cfg.dataDir,
      tls: cfg.tls,
      events: this.events,
      registry: this.registry,
      vms: this.vms,
      settings: this.settings,
      pools: this.pools,
      cluster: this.cluster,
      ports: portAllocatorFor(cfg),
    });
    this.migrations = new MigrationManager(this.host);
    // A higher limit admits queued moves at once.
    this.settings.onChange(() => {
      this.migrations.settingsChanged();
    });
  }

  get name(): string {
    return this.cfg.name;
  }

  /**
   * Prepares pools and switches, probes the accelerator, re-attaches to running QEMUs, recovers moves,
   * sweeps expired bitmaps of cut disk copies.
   */
  async init(opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.pools.init(this.cfg.pools);
    this.switches.init(this.cfg.switches);
    await this.settings.probe(opts);
    await this.vms.reattach(opts);
    // Moves a previous life of this agent left unfinished: finish or roll back.
    await this.migrations.recover();
    // After recovery: a move it undid has marked the bitmap it kept (resume-bitmaps.ts).
    await this.vms.sweepResumeBitmaps();
  }

  /** Detaches from every QEMU (they keep running) and closes the registry. */
  async close(): Promise<void> {
    this.migrations.shutdown();
    await this.cluster.stop();
    this.vms.detachAll();
    this.registry.close();
  }
}

/** This agent's URL as other nodes reach it. */
function endpointOf(listen: { host: string; port: number }): string {
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  return `https://${host}:${listen.port}`;
}
