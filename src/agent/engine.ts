// The engine: every action of this host, whatever asked for it (HTTP route, later the
// migration protocol). It owns the map of running QEMU processes, serialises operations per
// VM, and emits events. It never stops a VM when the agent itself stops.
import { DEFAULTS } from '../api/defaults.js';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { FerryError, InvalidInputError, NotFoundError, messageOf } from '../errors.js';
import { sleep } from '../util/exec.js';
import type { AgentConfig } from './config.js';
import { Registry } from './registry.js';
import { EventBus } from '../events/bus.js';
import { cpuInfo, memoryInfo, qemuInfo } from './capabilities.js';
import { detectAccelerator, type AccelProbe } from '../qemu/accel.js';
import { QemuProcess } from '../qemu/process.js';
import { imageInfo, isImageFormat, type ImageFormat } from '../qemu/img.js';
import type { SwitchBackend } from '../qemu/argv.js';
import { bridgeExists, createTap, deleteTap, tapName } from '../vm/network.js';
import { loadVm, saveVm } from '../vm/folder.js';
import { createVm, startVm, stopVm, pauseVm, resumeVm, removeVm, vmState, runtimePaths } from '../vm/lifecycle.js';
import { probeVm, bootblockVm } from '../vm/guests.js';
import { newMac, newVmId, parseVmSpec, type VmSpec, type VmSpecInput, type DiskSpec } from '../vm/spec.js';
import type { CreateVmOptions } from '../vm/lifecycle.js';
import {
  assertInUsablePool,
  findPool,
  poolOf,
  isInside,
  poolStatus,
  realPathLoose,
  setGrant,
  type PoolDef,
} from '../storage/pools.js';
import type { HostView, VmView, VmCreateBody, SwitchView, PoolView, MigrationSettings } from '../api/schemas.js';
import { HostSetBody } from '../api/schemas.js';
import type { z } from 'zod';
import { SlotQueue } from '../migration/queue.js';
import { IncomingManager } from '../migration/incoming.js';
import { MigrationManager } from '../migration/manager.js';
import { recoverSource } from '../migration/recovery.js';
import { Membership } from '../cluster/membership.js';
import { putHaRecord } from '../cluster/ha.js';
import { DEFAULT_POLICY, type ClusterPolicy } from '../cluster/model.js';
import { EtcdStore } from '../cluster/store.js';
import type { ClusterView } from '../api/schemas.js';
import { usableCpuModels, type CpuModelInfo } from '../qemu/cpu-models.js';
import type { Accelerator } from '../qemu/accel.js';

const AGENT_VERSION = '0.1.0';
/** Memory kept for the host itself when counting what VMs may use. */
const HOST_RESERVE_BYTES = 512 * 1024 * 1024;

export class Engine {
  readonly events = new EventBus();
  readonly registry: Registry;
  private procs = new Map<string, QemuProcess>();
  private locks = new Map<string, Promise<unknown>>();
  private accel: AccelProbe | null = null;
  /** VM name → the migration holding it (other operations are refused meanwhile). */
  private busy = new Map<string, string>();
  /** Live-migration slots of this host: outgoing and incoming count alike. */
  readonly slots = new SlotQueue(() => this.migrationSettings().maxLive);
  /** Storage-migration slots (max storage). */
  readonly storageSlots = new SlotQueue(() => this.migrationSettings().maxStorage);
  readonly incoming = new IncomingManager(this);
  readonly migrations = new MigrationManager(this);
  /** HA VMs this agent stopped because it lost its cluster lease (self-fence). */
  private fenced = new Set<string>();
  /** Set when this host belongs to a cluster. */
  membership: Membership | null = null;

  constructor(
    readonly cfg: AgentConfig,
    readonly domainId: string,
  ) {
    this.registry = new Registry(path.join(cfg.dataDir, 'ferry.db'));
  }

  get name(): string {
    return this.cfg.name;
  }

  /** Prepares pools and switches, probes the accelerator, re-attaches to running QEMUs. */
  async init(opts: { signal?: AbortSignal } = {}): Promise<void> {
    for (const p of this.cfg.pools) {
      this.registry.upsertPool(p);
      if (p.kind === 'local') await fsp.mkdir(p.path, { recursive: true });
    }
    const have = new Set(this.registry.listSwitches().map((s) => s.name));
    for (const s of this.cfg.switches) if (!have.has(s.name)) this.registry.addSwitch(s);
    this.accel = await detectAccelerator({ signal: opts.signal });
    for (const rec of this.registry.listVms()) {
      const runDir = this.runDir(rec.id);
      const paths = runtimePaths(runDir);
      try {
        await fsp.access(paths.pidFile);
      } catch {
        continue;
      }
      try {
        const proc = await QemuProcess.attach({
          vm: rec.name,
          runDir,
          qmpSocket: paths.qmpSocket,
          pidFile: paths.pidFile,
          signal: opts.signal,
          timeoutMs: 5000,
        });
        this.track(rec.name, proc);
        this.events.emit('vm.reattached', { vm: rec.name, pid: proc.pid });
      } catch {
        await fsp.rm(paths.pidFile, { force: true }); // stale: the VM stopped while the agent was down
      }
    }
    // Moves a previous life of this agent left unfinished: finish or roll back.
    await this.incoming.recover();
    await recoverSource(this);
  }

  /** Detaches from every QEMU (they keep running) and closes the registry. */
  async close(): Promise<void> {
    this.migrations.shutdown();
    await this.membership?.stop();
    for (const p of this.procs.values()) p.qmp.close();
    this.procs.clear();
    this.registry.close();
  }

  runDir(vmId: string): string {
    return path.join(this.cfg.dataDir, 'run', vmId);
  }

  private pools(): PoolDef[] {
    return this.registry.listPools();
  }

  /** Runs `fn` with the VM's lock held, so two operations on one VM never interleave. */
  private async withVmLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(name) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(fn);
    this.locks.set(name, next);
    try {
      return await next;
    } finally {
      if (this.locks.get(name) === next) this.locks.delete(name);
    }
  }

  private track(name: string, proc: QemuProcess): void {
    this.procs.set(name, proc);
    void proc.exited.then(() => {
      if (this.procs.get(name) === proc) {
        this.procs.delete(name);
        this.events.emit('vm.state', { vm: name, state: 'stopped' });
      }
    });
  }

  // ---- host ----

  async hostView(): Promise<HostView> {
    const [cpu, mem, qemu] = await Promise.all([cpuInfo(), memoryInfo(), qemuInfo()]);
    const vms = this.registry.listVms();
    let vmBytes = 0;
    for (const rec of vms) {
      if (!this.procs.has(rec.name)) continue;
      try {
        vmBytes += (await loadVm(rec.configPath)).memoryMiB * 1024 * 1024;
      } catch {
        /* config unreadable: not counted */
      }
    }
    return {
      name: this.name,
      domainId: this.domainId,
      agentVersion: AGENT_VERSION,
      cpu,
      accelerator: { name: this.accel?.accel ?? 'tcg', reason: this.accel?.reason ?? 'not probed' },
      // Free for VMs: what the kernel has available, but never more than what is not already
      // assigned to running VMs (QEMU allocates guest RAM lazily; a guest may touch all of it).
      qemu,
      memory: {
        totalBytes: mem.totalBytes,
        freeBytes: Math.max(0, Math.min(mem.freeBytes, mem.totalBytes - HOST_RESERVE_BYTES - vmBytes)),
        vmBytes,
      },
      pools: await this.listPools(),
      switches: this.listSwitches(),
      migration: this.migrationSettings(),
      vms: vms.length,
    };
  }

  migrationSettings(): MigrationSettings {
    const s = this.registry.getSetting<Partial<MigrationSettings>>('migration', {});
    return {
      enabled: s.enabled ?? true,
      maxLive: s.maxLive ?? DEFAULTS.maxLive,
      maxStorage: s.maxStorage ?? DEFAULTS.maxStorage,
      networks: s.networks ?? [],
      tls: s.tls ?? true,
      address: this.cfg.migrationAddress,
    };
  }

  async hostSet(body: z.infer<typeof HostSetBody>): Promise<HostView> {
    const cur = this.migrationSettings();
    const next: MigrationSettings = {
      ...cur,
      ...(body.maxLive !== undefined ? { maxLive: body.maxLive } : {}),
      ...(body.maxStorage !== undefined ? { maxStorage: body.maxStorage } : {}),
      ...(body.migrationNetworks !== undefined ? { networks: body.migrationNetworks } : {}),
      ...(body.tls !== undefined ? { tls: body.tls } : {}),
      ...(body.enabled !== undefined ? { enabled: body.enabled } : {}),
    };
    const { address: _a, ...stored } = next;
    this.registry.setSetting('migration', stored);
    this.events.emit('host.changed', { migration: next });
    this.slots.pump();
    this.storageSlots.pump();
    return this.hostView();
  }

  // ---- switches and pools ----

  listSwitches(): SwitchView[] {
    return this.registry.listSwitches();
  }

  async createSwitch(s: { name: string; kind: 'user' | 'bridge'; bridge?: string | undefined }): Promise<SwitchView> {
    if (s.kind === 'bridge' && !(await bridgeExists(s.bridge!))) {
      throw new FerryError(
        'E_BRIDGE_NOT_FOUND',
        `Cannot create switch '${s.name}' on host '${this.name}': there is no Linux bridge '${s.bridge}'; create it first (ip link add ${s.bridge} type bridge) or use --user`,
        { context: { bridge: s.bridge } },
      );
    }
    if (this.registry.listSwitches().some((x) => x.name === s.name)) {
      throw new FerryError(
        'E_SWITCH_EXISTS',
        `Cannot create switch '${s.name}' on host '${this.name}': it already exists; choose another name`,
        { context: { switch: s.name } },
      );
    }
    const view: SwitchView = { name: s.name, kind: s.kind, bridge: s.bridge ?? null };
    this.registry.addSwitch(view);
    this.events.emit('switch.created', { switch: s.name });
    return view;
  }

  async removeSwitch(name: string): Promise<void> {
    if (!this.registry.listSwitches().some((x) => x.name === name)) throw this.noSwitch(name);
    for (const rec of this.registry.listVms()) {
      const spec = await loadVm(rec.configPath).catch(() => null);
      if (spec?.nics.some((n) => n.switch === name)) {
        throw new FerryError(
          'E_SWITCH_IN_USE',
          `Cannot remove switch '${name}' from host '${this.name}': VM '${rec.name}' is connected to it; remove the VM or its NIC first`,
          { context: { switch: name, vm: rec.name } },
        );
      }
    }
    this.registry.removeSwitch(name);
    this.events.emit('switch.removed', { switch: name });
  }

  private noSwitch(name: string): NotFoundError {
    return new NotFoundError(
      'E_SWITCH_NOT_FOUND',
      `Cannot find switch '${name}' on host '${this.name}'; create it with 'ferry switch new ${name} --host ${this.name} --user'`,
      { switch: name },
    );
  }

  async listPools(): Promise<PoolView[]> {
    return Promise.all(this.pools().map((p) => poolStatus(p, this.name)));
  }

  /** Lists a folder inside a pool; the path may not leave the pool (symlinks resolved). */
  async browsePool(
    name: string,
    rel: string,
  ): Promise<{
    pool: string;
    root: string;
    path: string;
    absolute: string;
    entries: Array<{ name: string; kind: 'dir' | 'file'; sizeBytes: number }>;
  }> {
    const pool = findPool(this.pools(), name, this.name);
    const abs = path.resolve(pool.path, rel.replace(/^\/+/, ''));
    if (!isInside(realPathLoose(abs), realPathLoose(pool.path))) {
      throw new InvalidInputError(
        `Cannot browse '${rel}' in pool '${name}': it leads outside the pool; give a path inside it`,
        { path: rel },
      );
    }
    const ents = await fsp.readdir(abs, { withFileTypes: true }).catch(() => {
      throw new NotFoundError('E_PATH_NOT_FOUND', `Cannot browse '${rel}' in pool '${name}': no such folder`, {
        path: rel,
      });
    });
    const entries = [];
    for (const d of ents) {
      if (d.name.startsWith('.')) continue;
      const st = await fsp.stat(path.join(abs, d.name)).catch(() => null);
      if (!st) continue;
      entries.push({
        name: d.name,
        kind: st.isDirectory() ? ('dir' as const) : ('file' as const),
        sizeBytes: st.isDirectory() ? 0 : st.size,
      });
    }
    entries.sort((a, b) => (a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind === 'dir' ? -1 : 1));
    return { pool: name, root: pool.path, path: path.relative(pool.path, abs), absolute: abs, entries };
  }

  async addPool(p: { name: string; kind: 'local' | 'shared'; path: string }): Promise<PoolView> {
    if (this.pools().some((x) => x.name === p.name))
      throw new FerryError(
        'E_POOL_EXISTS',
        `Cannot add pool '${p.name}' to host '${this.name}': it exists; choose another name`,
        {},
      );
    const st = await fsp.stat(p.path).catch(() => null);
    if (!st?.isDirectory())
      throw new InvalidInputError(
        `Cannot add pool '${p.name}': ${p.path} is not a folder on host '${this.name}'; create or mount it first`,
        { path: p.path },
      );
    this.registry.upsertPool(p);
    this.events.emit('pool.changed', { pool: p.name });
    return poolStatus(p, this.name);
  }

  async grantPool(name: string, host: string, granted: boolean): Promise<PoolView> {
    const pool = findPool(this.pools(), name, this.name);
    await setGrant(pool, host, granted);
    this.events.emit('pool.changed', { pool: name });
    return poolStatus(pool, this.name);
  }

  // ---- VMs ----

  vmRecord(name: string): { name: string; id: string; configPath: string } {
    const rec = this.registry.getVm(name);
    if (!rec)
      throw new NotFoundError(
        'E_VM_NOT_FOUND',
        `Cannot find VM '${name}' on host '${this.name}'; 'ferry vm list' shows the VMs`,
        { vm: name, host: this.name },
      );
    return rec;
  }

  async listVms(): Promise<VmView[]> {
    const out: VmView[] = [];
    for (const rec of this.registry.listVms()) {
      try {
        out.push(await this.view(rec.name));
      } catch {
        /* config unreadable: skip */
      }
    }
    return out;
  }

  async showVm(name: string): Promise<VmView> {
    return this.view(name);
  }

  private async view(name: string): Promise<VmView> {
    const rec = this.vmRecord(name);
    const spec = await loadVm(rec.configPath);
    const proc = this.procs.get(name) ?? null;
    let st: Awaited<ReturnType<typeof vmState>> = { state: 'stopped', qemu: null };
    try {
      st = await vmState(proc);
    } catch {
      /* monitor busy or gone: report stopped/unknown below */
    }
    if (this.busy.has(name) && st.state !== 'stopped') st = { ...st, state: 'migrating' };
    const disks = await Promise.all(
      spec.disks.map(async (d) => ({
        id: d.id,
        path: d.path,
        format: d.format,
        pool: d.pool ?? null,
        virtualSizeBytes: await imageInfo(d.path, { forceShare: true, format: d.format, timeoutMs: 10_000 }).then(
          (i) => i.virtualSizeBytes,
          () => 0,
        ),
      })),
    );
    return {
      name: spec.name,
      id: spec.id,
      host: this.name,
      state: st.state,
      qemuState: st.qemu,
      pid: st.state === 'stopped' ? null : (proc?.pid ?? null),
      memoryMiB: spec.memoryMiB,
      cpus: spec.cpus,
      cpuModel: spec.cpuModel,
      machine: spec.machine,
      guest: spec.guest,
      configPath: spec.configPath,
      checkpointPath: spec.checkpointPath,
      pagingPath: spec.pagingPath,
      disks,
      nics: spec.nics,
      switches: [...new Set(spec.nics.map((n) => n.switch))],
      ha: spec.ha,
    };
  }

  async createVm(body: VmCreateBody, opts: { signal?: AbortSignal } = {}): Promise<VmView> {
    return this.withVmLock(body.name, async () => {
      if (this.registry.getVm(body.name)) {
        throw new FerryError(
          'E_VM_EXISTS',
          `Cannot create VM '${body.name}' on host '${this.name}': a VM with that name exists; choose another name or remove it`,
          { context: { vm: body.name } },
        );
      }
      const pools = this.pools();
      const local = pools.find((p) => p.kind === 'local')!;
      const folder = path.resolve(body.path ?? path.join(local.path, body.name));
      const folderPool = await assertInUsablePool(pools, this.name, folder, 'VM folder');
      const switches = this.listSwitches();
      for (const s of body.switches) if (!switches.some((x) => x.name === s)) throw this.noSwitch(s);

      // Disks: where each goes, checked before anything is created.
      const disks: Array<DiskSpec & { createBytes?: number }> = [];
      for (const [i, d] of body.disks.entries()) {
        const id = `disk${i}`;
        if (d.attach) {
          const pool = await assertInUsablePool(pools, this.name, d.attach, `disk image ${d.attach}`);
          const info = await imageInfo(d.attach, { timeoutMs: 10_000 }).catch((err: unknown) => {
            throw new NotFoundError(
              'E_DISK_NOT_FOUND',
              `Cannot attach ${d.attach} to VM '${body.name}': ${messageOf(err)}; give an existing disk image`,
              { path: d.attach },
            );
          });
          if (!isImageFormat(info.format))
            throw new InvalidInputError(
              `Cannot attach ${d.attach}: format '${info.format}' is not supported; convert it to qcow2, raw, vhdx or vpc`,
              { path: d.attach },
            );
          if (d.format && d.format !== info.format)
            throw new InvalidInputError(
              `Cannot attach ${d.attach} as ${d.format}: the image is ${info.format}; drop format= or convert it`,
              { path: d.attach },
            );
          disks.push({
            id,
            path: d.attach,
            format: info.format,
            bus: 'virtio',
            readOnly: false,
            cache: 'none',
            pool: pool.name,
          });
        } else {
          const format: ImageFormat = d.format ?? 'qcow2';
          const dir = d.pool ? path.join(findPool(pools, d.pool, this.name).path, body.name) : folder;
          const p = path.join(dir, `${id}.${format}`);
          const pool = await assertInUsablePool(pools, this.name, p, `disk ${id}`);
          disks.push({
            id,
            path: p,
            format,
            bus: 'virtio',
            readOnly: false,
            cache: 'none',
            pool: pool.name,
            createBytes: d.sizeBytes!,
          });
        }
      }
      const nics = body.switches.map((s, i) => ({ id: `nic${i}`, switch: s, mac: newMac() }));

      let built: { spec: VmSpecInput; create: CreateVmOptions };
      const base = { name: body.name, configPath: folder, memoryMiB: body.memoryMiB, cpus: body.cpus };
      if (body.guest === 'probe') {
        const [first, ...rest] = disks;
        built = probeVm({
          ...base,
          probe: body.probe,
          dataDisk: first
            ? {
                path: first.path,
                format: first.format,
                sizeBytes: first.createBytes,
                existing: first.createBytes === undefined,
                pool: first.pool,
              }
            : { pool: folderPool.name },
        });
        built.spec.disks = [...(built.spec.disks ?? []), ...rest.map((d, i) => strip({ ...d, id: `disk${i + 1}` }))];
        for (const [i, d] of rest.entries())
          if (d.createBytes) built.create.createDisks![`disk${i + 1}`] = d.createBytes;
      } else if (body.guest === 'bootblock') {
        built = bootblockVm(base);
        built.spec.disks = [...(built.spec.disks ?? []), ...disks.map(strip)];
        built.create.createDisks = Object.fromEntries(
          disks.filter((d) => d.createBytes).map((d) => [d.id, d.createBytes!]),
        );
      } else {
        const copyIn: Array<{ from: string; to: string }> = [];
        if (body.kernel) copyIn.push({ from: body.kernel, to: 'vmlinuz' });
        if (body.initrd) copyIn.push({ from: body.initrd, to: 'initrd.img' });
        if (!body.kernel && (body.initrd || body.append))
          throw new InvalidInputError(`Cannot create VM '${body.name}': --initrd and --append need --kernel`, {});
        if (!body.kernel && disks.length === 0)
          throw new InvalidInputError(
            `Cannot create VM '${body.name}': it has nothing to boot; give --disk/--attach with a bootable image, --kernel, or --guest probe|bootblock`,
            {},
          );
        built = {
          spec: {
            name: body.name,
            id: newVmId(),
            memoryMiB: body.memoryMiB,
            cpus: body.cpus,
            disks: disks.map(strip),
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
          create: {
            copyIn,
            createDisks: Object.fromEntries(disks.filter((d) => d.createBytes).map((d) => [d.id, d.createBytes!])),
          },
        };
      }
      built.spec.nics = nics;
      built.spec.ha = body.ha;
      if (body.cluster) {
        if (!body.ha)
          throw new InvalidInputError(
            `Cannot create VM '${body.name}': a priority, preferred owners or anti-affinity apply to clustered VMs; add --ha`,
            {},
          );
        built.spec.cluster = body.cluster;
      }
      if (body.cpu) built.spec.cpuModel = body.cpu;
      const spec = await createVm(built.spec, { ...built.create, signal: opts.signal });
      try {
        this.registry.addVm({
          name: spec.name,
          id: spec.id,
          configPath: spec.configPath,
          createdAt: new Date().toISOString(),
        });
      } catch (err) {
        await removeVm(spec, { deleteDisks: true });
        throw err;
      }
      this.events.emit('vm.created', { vm: spec.name });
      if (body.start) await this.startLocked(spec.name, opts);
      return this.view(spec.name);
    });
  }

  async startVm(name: string, opts: { signal?: AbortSignal } = {}): Promise<VmView> {
    return this.withVmLock(name, async () => {
      this.assertNotBusy(name);
      await this.startLocked(name, opts);
      return this.view(name);
    });
  }

  private async startLocked(name: string, opts: { signal?: AbortSignal }): Promise<void> {
    const rec = this.vmRecord(name);
    const running = this.procs.get(name);
    if (running && !running.hasExited) {
      throw new FerryError('E_VM_RUNNING', `Cannot start VM '${name}': it is already running on host '${this.name}'`, {
        context: { vm: name },
      });
    }
    const spec = await loadVm(rec.configPath);
    await this.checkVmStorage(spec);
    const switches = await this.prepareNics(spec);
    let proc: QemuProcess;
    try {
      proc = await startVm(spec, {
        runDir: this.runDir(spec.id),
        accel: this.accelerator(),
        signal: opts.signal,
        switches,
      });
    } catch (err) {
      await this.releaseNics(spec);
      throw err;
    }
    void proc.exited.then(() => this.releaseNics(spec));
    this.track(name, proc);
    this.events.emit('vm.state', { vm: name, state: 'running', pid: proc.pid });
    await this.recordHa(spec);
  }

  /** Every file of the VM must be in a pool this host may use (a revoked grant stops a start). */
  async checkVmStorage(spec: VmSpec): Promise<void> {
    const pools = this.pools();
    for (const d of spec.disks) await assertInUsablePool(pools, this.name, d.path, `disk ${d.id} of VM '${spec.name}'`);
  }

  /**
   * Makes each NIC's switch real on this host (a tap on the bridge for bridge switches) and
   * returns the resolver QEMU's command line is built with.
   */
  async prepareNics(spec: VmSpec): Promise<(nicId: string, switchName: string) => SwitchBackend> {
    const backends = new Map<string, SwitchBackend>();
    try {
      for (const [i, nic] of spec.nics.entries()) {
        const s = this.listSwitches().find((x) => x.name === nic.switch);
        if (!s) throw this.noSwitch(nic.switch);
        if (s.kind === 'user') {
          backends.set(nic.id, { kind: 'user' });
          continue;
        }
        const tap = tapName(spec.id, this.name, i);
        await createTap(tap, s.bridge!);
        backends.set(nic.id, { kind: 'bridge', bridge: s.bridge!, tap });
      }
    } catch (err) {
      await this.releaseNics(spec);
      throw err;
    }
    return (nicId) => backends.get(nicId) ?? { kind: 'user' };
  }

  async releaseNics(spec: VmSpec): Promise<void> {
    for (const [i, nic] of spec.nics.entries()) {
      const s = this.listSwitches().find((x) => x.name === nic.switch);
      if (s?.kind === 'bridge') await deleteTap(tapName(spec.id, this.name, i));
    }
  }

  private running(name: string): QemuProcess {
    this.vmRecord(name);
    const proc = this.procs.get(name);
    if (!proc || proc.hasExited)
      throw new FerryError(
        'E_VM_NOT_RUNNING',
        `Cannot do that to VM '${name}': it is not running on host '${this.name}'; start it first`,
        { context: { vm: name } },
      );
    return proc;
  }

  async stopVm(name: string, opts: { force: boolean; timeoutMs: number; signal?: AbortSignal }): Promise<VmView> {
    return this.withVmLock(name, async () => {
      this.assertNotBusy(name);
      const proc = this.running(name);
      this.events.emit('vm.state', { vm: name, state: 'stopping', force: opts.force });
      await stopVm(proc, opts);
      this.procs.delete(name);
      // Stopped on purpose: the cluster must not restart it elsewhere.
      await this.membership?.store?.delete(`vms/${name}`).catch(() => undefined);
      this.events.emit('vm.state', { vm: name, state: 'stopped' });
      return this.view(name);
    });
  }

  async pauseVm(name: string, opts: { signal?: AbortSignal } = {}): Promise<VmView> {
    return this.withVmLock(name, async () => {
      this.assertNotBusy(name);
      await pauseVm(this.running(name), opts);
      this.events.emit('vm.state', { vm: name, state: 'paused' });
      return this.view(name);
    });
  }

  async resumeVm(name: string, opts: { signal?: AbortSignal } = {}): Promise<VmView> {
    return this.withVmLock(name, async () => {
      this.assertNotBusy(name);
      await resumeVm(this.running(name), opts);
      this.events.emit('vm.state', { vm: name, state: 'running' });
      return this.view(name);
    });
  }

  async removeVm(name: string, opts: { deleteDisks: boolean }): Promise<void> {
    return this.withVmLock(name, async () => {
      this.assertNotBusy(name);
      const rec = this.vmRecord(name);
      const proc = this.procs.get(name);
      if (proc && !proc.hasExited) {
        throw new FerryError(
          'E_VM_RUNNING',
          `Cannot remove VM '${name}': it is running on host '${this.name}'; stop it first ('ferry vm stop ${name}')`,
          { context: { vm: name } },
        );
      }
      const spec = await loadVm(rec.configPath).catch(() => null);
      if (spec) await removeVm(spec, { deleteDisks: opts.deleteDisks });
      await fsp.rm(this.runDir(rec.id), { recursive: true, force: true });
      this.registry.removeVm(name);
      if (spec?.ha) await this.membership?.store?.delete(`vms/${name}`).catch(() => undefined);
      this.events.emit('vm.removed', { vm: name });
    });
  }

  /** The serial log file of a VM on this host (for the console route). */
  consoleFile(name: string): string {
    const rec = this.vmRecord(name);
    return runtimePaths(this.runDir(rec.id)).serialLog;
  }

  isRunning(name: string): boolean {
    const p = this.procs.get(name);
    return !!p && !p.hasExited;
  }

  // ---- migration support ----

  accelerator(): Accelerator {
    return this.accel?.accel ?? 'tcg';
  }

  /**
   * Where this host listens for migration streams: an address of its own inside the
   * configured migration networks, else the agent's --migration-address.
   */
  migrationListenAddress(): string {
    const nets = this.migrationSettings().networks;
    if (!nets.length) return this.cfg.migrationAddress;
    for (const list of Object.values(os.networkInterfaces())) {
      for (const a of list ?? []) if (a.family === 'IPv4' && nets.some((n) => inCidr(a.address, n))) return a.address;
    }
    throw new FerryError(
      'E_MIGRATION_NETWORK',
      `Cannot receive a migration on host '${this.name}': none of its addresses is in its migration networks (${nets.join(', ')}); fix them with 'ferry host set ${this.name} --migration-network CIDR'`,
      {},
    );
  }

  cpuModels(): Promise<CpuModelInfo[]> {
    return usableCpuModels(this.accelerator());
  }

  assertNotBusy(name: string): void {
    const job = this.busy.get(name);
    if (job)
      throw new FerryError(
        'E_VM_BUSY',
        `Cannot change VM '${name}' now: it is migrating (migration ${job}); wait for it or cancel it with 'ferry migration cancel ${job}'`,
        { context: { vm: name, migration: job } },
      );
  }
  markBusy(name: string, jobId: string): void {
    this.busy.set(name, jobId);
  }
  clearBusy(name: string, jobId: string): void {
    if (this.busy.get(name) === jobId) this.busy.delete(name);
  }

  runningProc(name: string): QemuProcess | null {
    const p = this.procs.get(name);
    return p && !p.hasExited ? p : null;
  }

  /** The VM now runs elsewhere: quit our QEMU (stopped at postmigrate) and forget the VM. */
  async releaseMigratedVm(name: string, proc: QemuProcess | null): Promise<void> {
    const rec = this.registry.getVm(name);
    if (proc) {
      this.procs.delete(name);
      await proc.quit({ timeoutMs: 10_000 });
    }
    this.registry.removeVm(name);
    if (rec)
      for (const f of ['qmp.sock', 'qmp-admin.sock', 'qemu.pid'])
        await fsp.rm(path.join(this.runDir(rec.id), f), { force: true });
    this.events.emit('vm.left', { vm: name });
  }

  // ---- cluster (HA) ----

  /** This agent's URL as other nodes reach it. */
  endpoint(): string {
    const host = this.cfg.listen.host.includes(':') ? `[${this.cfg.listen.host}]` : this.cfg.listen.host;
    return `https://${host}:${this.cfg.listen.port}`;
  }

  /**
   * Joins the cluster in the background: joining needs a quorum of etcd, and until then the
   * host works standalone and keeps trying. Resolves once joined (or the agent stops).
   */
  enableCluster(
    cluster: { name: string; endpoints: string[]; leaseSeconds?: number },
    opts: { onRetry?: (err: unknown) => void } = {},
  ): Promise<void> {
    const membership = new Membership(
      cluster,
      { name: this.name, endpoint: this.endpoint() },
      this.cfg.tls,
      this.events,
    );
    membership.onFence = () => this.fenceHaVms();
    membership.onRejoined = () => this.reconcileHa();
    // The fence process (src/cluster/fence.ts) guards the HA VMs when this agent cannot.
    membership.dataDir = this.cfg.dataDir;
    membership.onWatchdogFenced = (vms) => {
      for (const vm of vms) this.fenced.add(vm);
    };
    this.membership = membership;
    this.cfg.cluster = cluster;
    return (async () => {
      for (let attempt = 0; !membership.stopped; attempt++) {
        try {
          await membership.start();
          await this.reconcileHa();
          return;
        } catch (err) {
          if (attempt === 0) opts.onRetry?.(err);
          await sleep(2000);
        }
      }
    })();
  }

  /**
   * `ferry cluster create|join`: checks the etcd endpoints answer with this domain's
   * certificates, records the cluster in DATA/agent.json, and joins.
   */
  async joinCluster(
    body: { name: string; endpoints: string[]; create: boolean },
    opts: { signal?: AbortSignal } = {},
  ): Promise<ClusterView> {
    if (this.membership) {
      if (this.cfg.cluster?.name === body.name) return this.membership.view();
      throw new FerryError(
        'E_CLUSTER_EXISTS',
        `Cannot join cluster '${body.name}': host '${this.name}' is in cluster '${this.cfg.cluster?.name}'; a host belongs to one cluster`,
        {},
      );
    }
    let members: Record<string, string>;
    const probe = await EtcdStore.connect({
      endpoints: body.endpoints,
      tls: this.cfg.tls,
      prefix: `/ferry/clusters/${body.name}/`,
      dialTimeoutMs: 10_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    }).catch((err: unknown) => {
      throw new FerryError(
        'E_CLUSTER_UNAVAILABLE',
        `Cannot join cluster '${body.name}': etcd does not answer at ${body.endpoints.join(', ')} (${messageOf(err)}); start etcd with certificates of this domain and check the URLs`,
        { cause: err },
      );
    });
    try {
      members = await probe.getPrefix('members/');
    } finally {
      await probe.close();
    }
    const count = Object.keys(members).length;
    if (body.create && count)
      throw new FerryError(
        'E_CLUSTER_EXISTS',
        `Cannot create cluster '${body.name}': it exists (${count} members); join it with 'ferry cluster join ${body.name}'`,
        {},
      );
    if (!body.create && !count)
      throw new NotFoundError(
        'E_CLUSTER_NOT_FOUND',
        `Cannot join cluster '${body.name}': it has no members at ${body.endpoints.join(', ')}; create it first with 'ferry cluster create ${body.name}'`,
        {},
      );
    const file = path.join(this.cfg.dataDir, 'agent.json');
    const cur = await fsp.readFile(file, 'utf8').then(
      (t) => JSON.parse(t) as Record<string, unknown>,
      () => ({}),
    );
    await fsp.writeFile(
      `${file}.tmp`,
      JSON.stringify({ ...cur, cluster: { name: body.name, endpoints: body.endpoints } }, null, 2),
    );
    await fsp.rename(`${file}.tmp`, file);
    await this.enableCluster({ name: body.name, endpoints: body.endpoints });
    return this.membership!.view();
  }

  /** Keeps the cluster's record of an HA VM pointing at this node. */
  async recordHa(spec: VmSpec): Promise<void> {
    if (!spec.ha || !this.membership?.store) return;
    await putHaRecord(this.membership.store, {
      name: spec.name,
      id: spec.id,
      configPath: spec.configPath,
      owner: this.name,
      memoryMiB: spec.memoryMiB,
      spec: spec as unknown as Record<string, unknown>,
    }).catch((err: unknown) => this.events.emit('cluster.error', { vm: spec.name, message: messageOf(err) }));
  }

  /**
   * `ferry cluster add-vm`: the VM becomes clustered (HA) with this policy. Its files must be
   * on shared storage, or no other node could restart it. Asking again updates the policy.
   */
  async addClusterVm(name: string, policy: Partial<ClusterPolicy>): Promise<VmView> {
    const m = this.membership;
    if (!m)
      throw new NotFoundError(
        'E_CLUSTER_NOT_FOUND',
        `Cannot add VM '${name}' to a cluster: host '${this.name}' is not in one; join it with 'ferry cluster join'`,
        {},
      );
    m.need(`add VM '${name}' to the cluster`);
    return this.withVmLock(name, async () => {
      this.assertNotBusy(name);
      const spec = await loadVm(this.vmRecord(name).configPath);
      const pools = this.pools();
      const files = [
        ...spec.disks.map((d) => ({ what: `disk ${d.id}`, path: d.path })),
        { what: 'its folder', path: spec.configPath },
      ];
      for (const f of files) {
        const pool = poolOf(pools, f.path);
        if (pool?.kind !== 'shared') {
          throw new FerryError(
            'E_STORAGE_NOT_SHARED',
            `Cannot add VM '${name}' to cluster '${m.name}': ${f.what} (${f.path}) is ${pool ? `in local pool '${pool.name}'` : 'in no pool'}, so no other node could restart it; move it to a shared pool first ('ferry move-storage ${name} --path /shared/...')`,
            { context: { vm: name, path: f.path } },
          );
        }
      }
      spec.ha = true;
      spec.cluster = {
        ...DEFAULT_POLICY,
        ...(spec.cluster ?? {}),
        ...Object.fromEntries(Object.entries(policy).filter(([, v]) => v !== undefined)),
      };
      await saveVm(spec);
      if (this.isRunning(name)) await this.recordHa(spec);
      this.events.emit('vm.changed', { vm: name, ha: true });
      return this.view(name);
    });
  }

  /** `ferry cluster remove-vm`: the VM stays where it is, no longer highly available. */
  async removeClusterVm(name: string): Promise<VmView> {
    const m = this.membership;
    if (!m)
      throw new NotFoundError(
        'E_CLUSTER_NOT_FOUND',
        `Cannot remove VM '${name}' from a cluster: host '${this.name}' is not in one`,
        {},
      );
    const store = m.need(`remove VM '${name}' from the cluster`);
    return this.withVmLock(name, async () => {
      this.assertNotBusy(name);
      const spec = await loadVm(this.vmRecord(name).configPath);
      if (!spec.ha)
        throw new FerryError(
          'E_NOT_CLUSTERED',
          `Cannot remove VM '${name}' from cluster '${m.name}': it is not clustered`,
          {},
        );
      // The record goes first: once it is gone, no leader restarts the VM elsewhere.
      await store.delete(`vms/${name}`);
      spec.ha = false;
      delete spec.cluster;
      await saveVm(spec);
      this.events.emit('vm.changed', { vm: name, ha: false });
      return this.view(name);
    });
  }

  /** HA restart decided by the leader: register the VM here (its files are shared) and boot it. */
  async haStart(specIn: unknown, generation: number): Promise<void> {
    const spec = parseVmSpec(specIn, 'restart the HA VM');
    await this.withVmLock(spec.name, async () => {
      if (!this.registry.getVm(spec.name)) await this.adoptStopped(spec, { skipStorageCheck: false });
      if (!this.isRunning(spec.name)) await this.startLocked(spec.name, {});
      this.events.emit('vm.ha-started', { vm: spec.name, generation });
    });
  }

  /** Self-fence: stop every HA VM here at once (the cluster will run them elsewhere). */
  async fenceHaVms(): Promise<void> {
    // All at once: the lease is about to expire and the cluster to restart them elsewhere.
    await Promise.all(
      this.registry.listVms().map(async (rec) => {
        const proc = this.procs.get(rec.name);
        if (!proc || proc.hasExited) return;
        const spec = await loadVm(rec.configPath).catch(() => null);
        if (!spec?.ha) return;
        this.procs.delete(rec.name);
        await proc.kill();
        this.fenced.add(rec.name);
        this.events.emit('vm.fenced', { vm: rec.name });
      }),
    );
  }

  /**
   * After (re)joining: HA VMs the cluster now gives to another node are forgotten here (their
   * files stay: they are the VM's, on shared storage), and stopped if somehow running.
   */
  async reconcileHa(): Promise<void> {
    const store = this.membership?.store;
    if (!store) return;
    for (const rec of this.registry.listVms()) {
      const spec = await loadVm(rec.configPath).catch(() => null);
      if (!spec?.ha) continue;
      const raw = await store.get(`vms/${spec.name}`).catch(() => null);
      const owner = raw ? (JSON.parse(raw) as { owner: string }).owner : null;
      if (owner && owner !== this.name) {
        const proc = this.procs.get(rec.name);
        if (proc && !proc.hasExited) {
          this.procs.delete(rec.name);
          await proc.kill();
        }
        this.registry.removeVm(rec.name);
        this.events.emit('vm.left', { vm: rec.name, reason: `HA: now owned by ${owner}` });
      } else if (!owner) {
        // A running HA VM the cluster lost track of (a deliberately stopped one has no record).
        if (this.isRunning(rec.name)) await this.recordHa(spec);
      } else if (this.fenced.has(rec.name) && !this.isRunning(rec.name)) {
        // Fenced, but the cluster did not give it to another node (we were back before our
        // lease expired): run it here again, claiming it with a new fencing generation.
        const cur = JSON.parse(raw!) as { generation: number };
        const next = { ...cur, generation: cur.generation + 1 };
        if (
          await store
            .txn({
              compare: [{ key: `vms/${spec.name}`, value: raw! }],
              success: [{ type: 'put', key: `vms/${spec.name}`, value: JSON.stringify(next) }],
            })
            .catch(() => false)
        ) {
          await this.withVmLock(rec.name, () => this.startLocked(rec.name, {})).catch((err: unknown) =>
            this.events.emit('cluster.error', {
              vm: rec.name,
              message: `cannot restart after fencing: ${messageOf(err)}`,
            }),
          );
          this.events.emit('vm.ha-started', {
            vm: rec.name,
            generation: next.generation,
            reason: 'restarted after self-fence',
          });
        }
      }
      this.fenced.delete(rec.name);
    }
  }

  /** A VM that arrived by live migration: register it and track its QEMU. */
  adoptRunning(spec: VmSpec, proc: QemuProcess): void {
    void this.recordHa(spec);
    this.registry.addVm({
      name: spec.name,
      id: spec.id,
      configPath: spec.configPath,
      createdAt: new Date().toISOString(),
    });
    this.track(spec.name, proc);
    this.events.emit('vm.arrived', { vm: spec.name, pid: proc.pid });
    this.events.emit('vm.state', { vm: spec.name, state: 'running', pid: proc.pid });
  }

  /** A stopped VM whose files this host sees moves here: check and register it. */
  async adoptStopped(specIn: unknown, opts: { skipStorageCheck?: boolean } = {}): Promise<void> {
    const spec = parseVmSpec(specIn, 'accept the VM');
    if (!opts.skipStorageCheck && !this.migrationSettings().enabled)
      throw new FerryError(
        'E_MIGRATION_DISABLED',
        `Cannot receive VM '${spec.name}' on host '${this.name}': migrations are disabled here`,
        {},
      );
    if (this.registry.getVm(spec.name) || this.registry.getVmById(spec.id))
      throw new FerryError(
        'E_NAME_EXISTS',
        `Cannot receive VM '${spec.name}' on host '${this.name}': a VM with that name or id is already here`,
        {},
      );
    if (!opts.skipStorageCheck) await this.checkVmStorage(spec);
    this.registry.addVm({
      name: spec.name,
      id: spec.id,
      configPath: spec.configPath,
      createdAt: new Date().toISOString(),
    });
    this.events.emit('vm.arrived', { vm: spec.name });
  }

  /** Names and ids here, arriving ones included (for the destination's name check). */
  vmIds(): Array<{ name: string; id: string }> {
    return [...this.registry.listVms().map((r) => ({ name: r.name, id: r.id })), ...this.incoming.arriving()];
  }
}

function inCidr(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split('/');
  const n = (a: string): number => a.split('.').reduce((acc, o) => (acc << 8) + Number(o), 0) >>> 0;
  const mask = Number(bits) === 0 ? 0 : (~0 << (32 - Number(bits))) >>> 0;
  return (n(ip) & mask) >>> 0 === (n(base!) & mask) >>> 0;
}

function strip(d: DiskSpec & { createBytes?: number }): DiskSpec {
  const { createBytes: _c, ...rest } = d;
  return rest;
}
