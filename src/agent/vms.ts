// The VM inventory of this host: which VMs it owns (registry rows), their QEMU processes
// (re-attached when the agent starts: QEMU runs detached and never stops with the agent),
// create/start/stop/pause/resume/remove, the views users see, and VMs leaving and arriving
// by migration. Every operation on a VM passes through its phase gate (vm-gate.ts).
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, NotFoundError, messageOf } from '../errors.js';
import type { Emit } from '../api/events.js';
import type {
  CheckpointList,
  CheckpointView,
  MigrationSettings,
  VmCreateBody,
  VmImportBody,
  VmView,
} from '../api/schemas.js';
import {
  applyCheckpoint,
  listCheckpoints,
  removeCheckpoint,
  takeCheckpoint,
  type CheckpointDeps,
} from '../checkpoint/checkpoints.js';
import { removeCheckpointFiles } from '../checkpoint/store.js';
import { checkDiskChains } from '../vm/disk-chains.js';
import type { Accelerator } from '../qemu/accel.js';
import type { DiskChains } from '../qemu/argv.js';
import { virtualSize } from '../qemu/virtual-size.js';
import { QemuProcess } from '../qemu/process.js';
import { loadVm, saveVm } from '../vm/folder.js';
import { assertStoppedForCpu, resolveCpuModel } from '../vm/cpu-setting.js';
import { usableCpuModels } from '../qemu/cpu-models.js';
import { createVm, pauseVm, removeVm, resumeVm, runtimePaths, startVm, stopVm, vmState } from '../vm/lifecycle.js';
import { parseVmSpec, type VmSpec } from '../vm/spec.js';
import { hardwareView } from '../vm/real-guest.js';
import { importedVm } from '../vm/import.js';
import { qemuInfo } from './capabilities.js';
import type { Pools } from './pools.js';
import type { Registry, VmRecord } from './registry.js';
import type { NicResolver, Switches } from './switches.js';
import { buildVm } from './vm-build.js';
import { decideBacking, noRoomError } from '../vm/memory-backing.js';
import { createPagingFile, removePagingFile } from './paging-file.js';
import { VmGate, type GatedOp, type VmPhase } from './vm-gate.js';
import type { QmpEvent } from '../qemu/commands.js';
import { sleep } from '../util/exec.js';
import { describeTrouble, watchAfterArrival, type AfterArrival } from '../migration/after-arrival.js';
import { droppedLine, expireMarks, SWEEP_WHY, sweepBitmaps } from '../migration/resume-bitmaps.js';
import { dropKeptCopies, sweepKeptCopies } from '../migration/kinds/storage-resume.js';

/**
 * Why a QEMU Ferry was not ending went away, from its monitor's events and the VM's phase then.
 * 'guest': powered off from inside (its OS, or the ACPI button), stopped on purpose as by
 * `vm stop` — which goes through the ACPI button too, and says so itself. 'died': no SHUTDOWN
 * at all, and no operation on the VM (a crash, the OOM killer, kill -9). 'other': on purpose
 * from the host (a SIGTERM from systemd stopping the host, a QMP quit: SHUTDOWN, not the guest's).
 */
export function exitCause(history: readonly QmpEvent[], phase: VmPhase): 'guest' | 'died' | 'other' {
  const off = [...history].reverse().find((e) => e.event === 'SHUTDOWN');
  if (off?.data?.guest === true) return phase === 'stopping' ? 'other' : 'guest';
  return !off && phase === 'idle' ? 'died' : 'other';
}

/** What the VM inventory tells the cluster (a no-op when the host is in none). */
export interface ClusterHooks {
  /** A VM started or arrived here: the cluster's record of an HA VM points at this node. */
  recordHa(spec: VmSpec): Promise<void>;
  /** A VM's guest powered it off: its HA record, if this node's, goes (errors become events). */
  guestStopped(name: string): Promise<void>;
  /** A VM's QEMU died on its own: an HA VM is restarted here, within limits (errors become events). */
  crashed(name: string): Promise<void>;
  /** Before an HA VM boots here: refused when the cluster's record gives it to another node. */
  mayBoot(spec: VmSpec, opts?: { signal?: AbortSignal }): Promise<void>;
  /** A VM was stopped on purpose or removed: the cluster must not restart it elsewhere. */
  forgetVm(name: string): Promise<void>;
  /** A stopped VM's spec changed (vm set): the cluster's record of it, if any, carries the new spec. */
  specChanged(spec: VmSpec): Promise<void>;
}

export interface VmInventoryDeps {
  host: string;
  dataDir: string;
  registry: Registry;
  emit: Emit;
  pools: Pools;
  switches: Switches;
  settings: { accelerator(): Accelerator; migration(): MigrationSettings; vmRoomMiB(): Promise<number> };
  cluster: ClusterHooks;
}

export class VmInventory {
  private readonly gate = new VmGate();
  private readonly procs = new Map<string, QemuProcess>();
  /** VM name → its Smart Paging file, while its QEMU runs from one. */
  private readonly paging = new Map<string, string>();
  /** VM name → its last arrival by a live move (and what its guest did right after). */
  private readonly arrivals = new Map<string, AfterArrival>();

  constructor(private readonly d: VmInventoryDeps) {}

  /** This host's name. */
  get host(): string {
    return this.d.host;
  }

  /** The folder of a VM's runtime files (QMP sockets, pidfile, serial log). */
  runDir(vmId: string): string {
    return path.join(this.d.dataDir, 'run', vmId);
  }

  /** Agent start: re-attaches to the QEMU of every VM that kept running while the agent was down. */
  async reattach(opts: { signal?: AbortSignal } = {}): Promise<void> {
    for (const rec of this.d.registry.listVms()) {
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
        const file = await pagingFileOf(runDir);
        if (file) this.usePagingFile(rec.name, proc, file);
        this.d.emit('vm.reattached', { vm: rec.name, pid: proc.pid });
      } catch {
        await fsp.rm(paths.pidFile, { force: true }); // stale: the VM stopped while the agent was down
      }
    }
  }

  /** Agent stop: lets go of every QEMU (they keep running). */
  detachAll(): void {
    for (const p of this.procs.values()) p.qmp.close();
    this.procs.clear();
  }

  private track(name: string, proc: QemuProcess): void {
    this.procs.set(name, proc);
    void proc.exited.then(async () => {
      if (this.procs.get(name) !== proc) return; // Ferry ended it (a kill, a move, a checkpoint)
      this.procs.delete(name);
      const phase = this.gate.phase(name);
      // Its monitor's last event (SHUTDOWN, and why) is read before the socket's end: wait for that.
      await Promise.race([proc.qmp.closed, sleep(2000)]);
      const why = exitCause(proc.qmp.history, phase);
      this.d.emit('vm.state', {
        vm: name,
        state: 'stopped',
        ...(why === 'guest'
          ? { reason: 'powered off by its guest' }
          : why === 'died'
            ? { reason: 'its QEMU exited on its own' }
            : {}),
      });
      if (why === 'guest') void this.d.cluster.guestStopped(name);
      else if (why === 'died') void this.d.cluster.crashed(name);
    });
  }

  // ---- reading ----

  /** The VM's registry row; E_VM_NOT_FOUND. */
  record(name: string): VmRecord {
    const rec = this.d.registry.getVm(name);
    if (!rec)
      throw new NotFoundError(
        'E_VM_NOT_FOUND',
        `Cannot find VM '${name}' on host '${this.d.host}'; 'ferry vm list' shows the VMs`,
        { vm: name, host: this.d.host },
      );
    return rec;
  }

  registered(): VmRecord[] {
    return this.d.registry.listVms();
  }

  /** Names and ids registered here. */
  ids(): Array<{ name: string; id: string }> {
    return this.registered().map((r) => ({ name: r.name, id: r.id }));
  }

  spec(name: string): Promise<VmSpec> {
    return loadVm(this.record(name).configPath);
  }

  /** Its QEMU while it runs, else null. */
  proc(name: string): QemuProcess | null {
    const p = this.procs.get(name);
    return p && !p.hasExited ? p : null;
  }

  isRunning(name: string): boolean {
    return this.proc(name) !== null;
  }

  private running(name: string): QemuProcess {
    this.record(name);
    const proc = this.proc(name);
    if (!proc)
      throw new FerryError(
        'E_VM_NOT_RUNNING',
        `Cannot do that to VM '${name}': it is not running on host '${this.d.host}'; start it first`,
        { context: { vm: name } },
      );
    return proc;
  }

  /** For the host view: how many VMs, and the memory of the running ones (in RAM, from paging files). */
  async usage(): Promise<{ count: number; runningBytes: number; pagingBytes: number }> {
    const vms = this.registered();
    let runningBytes = 0;
    let pagingBytes = 0;
    for (const rec of vms) {
      if (!this.procs.has(rec.name)) continue;
      try {
        const bytes = (await loadVm(rec.configPath)).memoryMiB * 1024 * 1024;
        if (this.paging.has(rec.name)) pagingBytes += bytes;
        else runningBytes += bytes;
      } catch {
        /* config unreadable: not counted */
      }
    }
    return { count: vms.length, runningBytes, pagingBytes };
  }

  /**
   * Where a VM starting or arriving here gets its RAM: ordinary memory when the host has room
   * (free memory minus the reserve, and --max-vm-memory), else — when it allows Smart Paging —
   * a new paging file; else E_VM_MEMORY. Returns the file, or null for ordinary memory.
   */
  async memoryFor(spec: VmSpec, action: 'start' | 'move'): Promise<string | null> {
    const room = await this.d.settings.vmRoomMiB();
    const d = decideBacking(spec.memoryMiB, room, spec.smartPaging === true);
    if (d.backing === null) throw noRoomError(action, spec.name, this.d.host, d.roomMiB, spec.memoryMiB);
    if (d.backing === 'ram') return null;
    return createPagingFile(spec, this.d.host, this.d.pools.list());
  }

  /** The VM's QEMU runs from `file`: counted as such, and the file goes when the QEMU exits. */
  usePagingFile(name: string, proc: QemuProcess, file: string): void {
    this.paging.set(name, file);
    void proc.exited.then(async () => {
      if (this.paging.get(name) === file && this.procs.get(name) !== proc) this.paging.delete(name);
      await removePagingFile(file);
    });
  }

  async list(): Promise<VmView[]> {
    const out: VmView[] = [];
    for (const rec of this.registered()) {
      try {
        out.push(await this.view(rec.name));
      } catch {
        /* config unreadable: skip */
      }
    }
    return out;
  }

  async view(name: string): Promise<VmView> {
    const spec = await this.spec(name);
    const proc = this.procs.get(name) ?? null;
    let st: Awaited<ReturnType<typeof vmState>> = { state: 'stopped', qemu: null };
    try {
      st = await vmState(proc);
    } catch {
      /* monitor busy or gone: report stopped/unknown below */
    }
    if (this.gate.movingJob(name) !== null && st.state !== 'stopped') st = { ...st, state: 'migrating' };
    const roots = this.d.pools.list().map((p) => p.path);
    const disks = await Promise.all(
      spec.disks.map(async (d) => ({
        id: d.id,
        path: d.path,
        format: d.format,
        pool: d.pool ?? null,
        role: d.role ?? 'data',
        virtualSizeBytes: await virtualSize(d.path, d.format, { roots, timeoutMs: 10_000 }).catch(() => 0),
      })),
    );
    return {
      name: spec.name,
      id: spec.id,
      host: this.d.host,
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
      smartPaging: spec.smartPaging === true,
      memoryBacking: st.state === 'stopped' ? null : this.paging.has(name) ? 'paging-file' : 'ram',
      pagingFile: st.state === 'stopped' ? null : (this.paging.get(name) ?? null),
      ...hardwareView(spec),
      checkpoints: (await listCheckpoints(spec).catch(() => null))?.checkpoints ?? [],
      arrival: this.arrivalView(name),
    };
  }

  private arrivalView(name: string): VmView['arrival'] {
    const a = this.arrivals.get(name);
    if (!a) return null;
    return {
      ...a,
      trouble: a.trouble ? { ...a.trouble } : null,
      message: describeTrouble(name, a, this.d.settings.accelerator()),
    };
  }

  /** The serial log file of a VM (for the console route). */
  consoleFile(name: string): string {
    return runtimePaths(this.runDir(this.record(name).id)).serialLog;
  }

  // ---- operations (each through the VM's gate) ----

  private gated<T>(name: string, op: GatedOp, fn: () => Promise<T>): Promise<T> {
    return this.gate.run(name, op, fn);
  }

  create(body: VmCreateBody, opts: { signal?: AbortSignal } = {}): Promise<VmView> {
    return this.gated(body.name, 'create', async () => {
      if (this.d.registry.getVm(body.name)) {
        throw new FerryError(
          'E_VM_EXISTS',
          `Cannot create VM '${body.name}' on host '${this.d.host}': a VM with that name exists; ` +
            'choose another name or remove it',
          { context: { vm: body.name } },
        );
      }
      const built = await buildVm(body, {
        host: this.d.host,
        pools: this.d.pools.list(),
        checkSwitch: (s) => this.d.switches.get(s),
        machineTypes: async () => (await qemuInfo()).machineTypes,
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      const spec = await createVm(built.spec, { ...built.create, pools: this.d.pools.list(), signal: opts.signal });
      try {
        this.register(spec);
      } catch (err) {
        await removeVm(spec, { deleteDisks: true, pools: this.d.pools.list() });
        throw err;
      }
      this.d.emit('vm.created', { vm: spec.name });
      if (body.start) await this.boot(spec.name, opts);
      return this.view(spec.name);
    });
  }

  start(name: string, opts: { signal?: AbortSignal } = {}): Promise<VmView> {
    return this.gated(name, 'start', async () => {
      await this.boot(name, opts);
      return this.view(name);
    });
  }

  /** Starts QEMU for a registered VM (the caller holds its gate). */
  private async boot(name: string, opts: { signal?: AbortSignal }): Promise<void> {
    const rec = this.record(name);
    if (this.isRunning(name)) {
      throw new FerryError(
        'E_VM_RUNNING',
        `Cannot start VM '${name}': it is already running on host '${this.d.host}'`,
        { context: { vm: name } },
      );
    }
    const spec = await loadVm(rec.configPath);
    await this.d.cluster.mayBoot(spec, opts);
    const chains = await this.checkStorage(spec);
    const memoryFile = await this.memoryFor(spec, 'start');
    let proc: QemuProcess;
    try {
      const switches = await this.prepareNics(spec);
      try {
        proc = await startVm(spec, {
          runDir: this.runDir(spec.id),
          accel: this.d.settings.accelerator(),
          signal: opts.signal,
          switches,
          chains,
          pools: this.d.pools.list(),
          host: this.d.host,
          ...(memoryFile ? { memoryFile } : {}),
        });
      } catch (err) {
        await this.releaseNics(spec);
        throw err;
      }
    } catch (err) {
      if (memoryFile) await removePagingFile(memoryFile);
      throw err;
    }
    void proc.exited.then(() => this.releaseNics(spec));
    this.track(name, proc);
    if (memoryFile) this.usePagingFile(name, proc, memoryFile);
    this.d.emit('vm.state', { vm: name, state: 'running', pid: proc.pid });
    await this.sweepBitmaps(name, spec.id, proc);
    await this.d.cluster.recordHa(spec);
  }

  /**
   * Agent start: the expired bitmaps of cut disk copies on every running VM, then the marks past
   * their age (resume-bitmaps.ts), then storage moves' expired kept copies (storage-resume.ts).
   * A stopped VM's bitmaps are swept when it starts or moves.
   */
  async sweepResumeBitmaps(): Promise<void> {
    for (const rec of this.d.registry.listVms()) {
      const proc = this.procs.get(rec.name);
      if (proc && !this.gate.movingJob(rec.name)) await this.sweepBitmaps(rec.name, rec.id, proc);
    }
    await expireMarks(this.d.dataDir).catch(() => 0);
    // Cut storage moves' kept copies past their age; never a file a VM here uses as its disk.
    const inUse = new Set<string>();
    for (const rec of this.d.registry.listVms())
      for (const d of (await this.spec(rec.name).catch(() => null))?.disks ?? []) inUse.add(d.path);
    await sweepKeptCopies(this.d.dataDir, (p) => inUse.has(p)).catch(() => 0);
  }

  /** A VM's expired bitmaps of cut disk copies go; never fails its start (a bitmap left costs writes, no more). */
  private async sweepBitmaps(name: string, vmId: string, proc: QemuProcess): Promise<void> {
    try {
      const gone = await sweepBitmaps(proc.qmp, this.d.dataDir, vmId);
      if (gone.length) this.d.emit('vm.bitmaps', { vm: name, removed: gone, message: droppedLine(gone, SWEEP_WHY) });
    } catch (err) {
      this.d.emit('vm.bitmaps', { vm: name, removed: [], message: `sweeping its bitmaps: ${messageOf(err)}` });
    }
  }

  stop(name: string, opts: { force: boolean; timeoutMs: number; signal?: AbortSignal }): Promise<VmView> {
    return this.gated(name, 'stop', async () => {
      const proc = this.running(name);
      this.d.emit('vm.state', { vm: name, state: 'stopping', force: opts.force });
      await stopVm(proc, opts);
      this.procs.delete(name);
      // Stopped on purpose: the cluster must not restart it elsewhere.
      await this.d.cluster.forgetVm(name);
      this.d.emit('vm.state', { vm: name, state: 'stopped' });
      return this.view(name);
    });
  }

  pause(name: string, opts: { signal?: AbortSignal } = {}): Promise<VmView> {
    return this.gated(name, 'pause', async () => {
      await pauseVm(this.running(name), opts);
      this.d.emit('vm.state', { vm: name, state: 'paused' });
      return this.view(name);
    });
  }

  resume(name: string, opts: { signal?: AbortSignal } = {}): Promise<VmView> {
    return this.gated(name, 'resume', async () => {
      await resumeVm(this.running(name), opts);
      this.d.emit('vm.state', { vm: name, state: 'running' });
      return this.view(name);
    });
  }

  /** `ferry vm import`: a parsed libvirt domain becomes a VM here (src/vm/import.ts builds it). */
  import(body: VmImportBody, opts: { signal?: AbortSignal } = {}): Promise<{ vm: VmView; notes: string[] }> {
    const name = body.name ?? body.plan.name;
    return this.gated(name, 'create', async () => {
      const built = await importedVm(body, {
        host: this.d.host,
        pools: this.d.pools.list(),
        switches: this.d.switches.list(),
        machineTypes: (await qemuInfo()).machineTypes,
        ...opts,
      });
      const clash = this.d.registry.getVm(name) ?? this.d.registry.getVmById(built.spec.id);
      if (clash)
        throw new FerryError(
          'E_VM_EXISTS',
          `Cannot import VM '${name}' on host '${this.d.host}': VM '${clash.name}' has that name or UUID; ` +
            'remove it first, or import under another --name',
          { context: { vm: name } },
        );
      const spec = await createVm(built.spec, { ...built.create, pools: this.d.pools.list(), signal: opts.signal });
      try {
        this.register(spec);
      } catch (err) {
        await removeVm(spec, { deleteDisks: true, pools: this.d.pools.list() });
        throw err;
      }
      this.d.emit('vm.created', { vm: name });
      return { vm: await this.view(name), notes: built.notes };
    });
  }

  remove(name: string, opts: { deleteDisks: boolean; deleteExternal?: boolean }): Promise<void> {
    return this.gated(name, 'remove', async () => {
      const rec = this.record(name);
      if (this.isRunning(name)) {
        throw new FerryError(
          'E_VM_RUNNING',
          `Cannot remove VM '${name}': it is running on host '${this.d.host}'; stop it first ('ferry vm stop ${name}')`,
          { context: { vm: name } },
        );
      }
      const spec = await loadVm(rec.configPath).catch(() => null);
      if (spec && opts.deleteDisks) await removeCheckpointFiles(spec, opts);
      if (spec) await removeVm(spec, { ...opts, pools: this.d.pools.list() });
      // A cut storage move's kept copies are the VM's files too (storage-resume.ts).
      if (spec) await dropKeptCopies(this.d.dataDir, spec).catch(() => []);
      await fsp.rm(this.runDir(rec.id), { recursive: true, force: true });
      this.d.registry.removeVm(name);
      if (spec?.ha) await this.d.cluster.forgetVm(name);
      this.d.emit('vm.removed', { vm: name });
    });
  }

  /**
   * `ferry vm set`: a stopped VM's CPU model (--cpu), checked against this host's QEMU; whether
   * it allows Smart Paging (--smart-paging, running or not: it counts at its next start or move).
   */
  set(name: string, body: { cpu?: string; smartPaging?: boolean }, opts: { signal?: AbortSignal } = {}) {
    return this.gated(name, 'configure', async (): Promise<VmView> => {
      const spec = await this.spec(name);
      let model = spec.cpuModel;
      if (body.cpu !== undefined) {
        const cpu = body.cpu;
        assertStoppedForCpu(name, this.isRunning(name));
        const accel = this.d.settings.accelerator();
        const models = cpu === 'host' ? [] : await usableCpuModels(accel, opts);
        model = resolveCpuModel(name, cpu, { accel, models });
      }
      const paging = body.smartPaging ?? spec.smartPaging === true;
      if (model !== spec.cpuModel || paging !== (spec.smartPaging === true)) {
        spec.cpuModel = model;
        if (paging) spec.smartPaging = true;
        else delete spec.smartPaging;
        await saveVm(spec);
        await this.d.cluster.specChanged(spec);
        this.d.emit('vm.changed', { vm: name, ha: spec.ha });
      }
      return this.view(name);
    });
  }

  /** Changes a VM's spec (cluster add-vm/remove-vm): `change` checks, edits and saves it. */
  configure(name: string, change: (spec: VmSpec) => Promise<void>): Promise<VmView> {
    return this.gated(name, 'configure', async () => {
      await change(await this.spec(name));
      return this.view(name);
    });
  }

  // ---- checkpoints (src/checkpoint) ----

  checkpoints(name: string): Promise<CheckpointList> {
    return this.spec(name).then((spec) => listCheckpoints(spec));
  }

  checkpointNew(name: string, checkpoint: string, opts: { signal?: AbortSignal } = {}): Promise<CheckpointView> {
    return this.gated(name, 'checkpoint', async () => {
      const c = await takeCheckpoint(await this.spec(name), checkpoint, this.checkpointDeps(name, opts));
      this.d.emit('vm.checkpoint', { vm: name, checkpoint, action: 'new', pauseMs: c.pauseMs, tookMs: c.tookMs });
      return c;
    });
  }

  checkpointApply(
    name: string,
    checkpoint: string,
    discard: boolean,
    opts: { signal?: AbortSignal } = {},
  ): Promise<{ checkpoint: string; branch: string | null; running: boolean; vm: VmView }> {
    return this.gated(name, 'checkpoint', async () => {
      const r = await applyCheckpoint(await this.spec(name), checkpoint, discard, this.checkpointDeps(name, opts));
      this.d.emit('vm.checkpoint', { vm: name, checkpoint, action: 'apply', branch: r.branch });
      return { ...r, vm: await this.view(name) };
    });
  }

  checkpointRemove(name: string, checkpoint: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    return this.gated(name, 'checkpoint', async () => {
      await removeCheckpoint(await this.spec(name), checkpoint, this.checkpointDeps(name, opts));
      this.d.emit('vm.checkpoint', { vm: name, checkpoint, action: 'remove' });
    });
  }

  /** What a checkpoint operation may do to the VM's QEMU (the caller holds the VM's gate). */
  private checkpointDeps(name: string, opts: { signal?: AbortSignal }): CheckpointDeps {
    const rec = this.record(name);
    return {
      proc: this.proc(name),
      runDir: this.runDir(rec.id),
      pools: this.d.pools.list(),
      host: this.d.host,
      ...(opts.signal ? { signal: opts.signal } : {}),
      startIncoming: async (spec) => {
        const chains = await this.checkStorage(spec);
        // A checkpoint's memory comes back like a start: within the host's room, or Smart Paging.
        const memoryFile = await this.memoryFor(spec, 'start');
        let proc: QemuProcess;
        try {
          const switches = await this.prepareNics(spec);
          try {
            proc = await startVm(spec, {
              runDir: this.runDir(spec.id),
              accel: this.d.settings.accelerator(),
              incoming: true,
              switches,
              chains,
              pools: this.d.pools.list(),
              host: this.d.host,
              ...(memoryFile ? { memoryFile } : {}),
              ...(opts.signal ? { signal: opts.signal } : {}),
            });
          } catch (err) {
            await this.releaseNics(spec);
            throw err;
          }
        } catch (err) {
          if (memoryFile) await removePagingFile(memoryFile);
          throw err;
        }
        void proc.exited.then(() => this.releaseNics(spec));
        this.track(name, proc);
        if (memoryFile) this.usePagingFile(name, proc, memoryFile);
        return proc;
      },
      resumed: (proc) => {
        this.d.emit('vm.state', { vm: name, state: 'running', pid: proc.pid });
        void this.loadAndRecordHa(name);
      },
      quit: async (proc) => {
        this.procs.delete(name);
        await proc.quit({ timeoutMs: 30_000 });
        this.d.emit('vm.state', { vm: name, state: 'stopped' });
      },
    };
  }

  private async loadAndRecordHa(name: string): Promise<void> {
    await this.d.cluster.recordHa(await this.spec(name)).catch(() => undefined);
  }

  /** HA restart decided by the leader: register the VM here unless it is (its files are shared), boot it. */
  haStart(spec: VmSpec): Promise<void> {
    return this.gated(spec.name, 'ha-start', async () => {
      if (!this.d.registry.getVm(spec.name)) await this.adopt(spec, { skipStorageCheck: false });
      if (!this.isRunning(spec.name)) await this.boot(spec.name, {});
    });
  }

  /**
   * Kills the VM's QEMU at once, whatever its phase (self-fencing cannot wait for an
   * operation to end). False when it was not running.
   */
  async kill(name: string): Promise<boolean> {
    const proc = this.proc(name);
    if (!proc) return false;
    this.procs.delete(name); // forgotten first: its exit is not reported as a stop
    await proc.kill();
    return true;
  }

  /** Forgets a VM another node now owns: its QEMU is killed if it runs; its files stay. */
  async forget(name: string, reason: string): Promise<void> {
    await this.kill(name);
    this.d.registry.removeVm(name);
    this.d.emit('vm.left', { vm: name, reason });
  }

  // ---- storage and NICs ----

  /** The disks' checked backing chains (vm/disk-chains.ts), for a start to pin. */
  checkStorage(spec: VmSpec, opts: { signal?: AbortSignal } = {}): Promise<DiskChains> {
    return checkDiskChains(spec, this.d.pools.list(), this.d.host, opts);
  }

  prepareNics(spec: VmSpec): Promise<NicResolver> {
    return this.d.switches.attach(spec);
  }

  releaseNics(spec: VmSpec): Promise<void> {
    return this.d.switches.detach(spec);
  }

  // ---- moves ----

  /** A move takes the VM: every other operation is refused until `release`. */
  hold(name: string, jobId: string): void {
    this.gate.hold(name, jobId);
  }

  release(name: string, jobId: string): void {
    this.gate.release(name, jobId);
  }

  /** The VM now runs elsewhere (the move holding it says so): quit our QEMU, forget the VM. */
  async movedAway(name: string, proc: QemuProcess | null): Promise<void> {
    this.arrivals.delete(name);
    const rec = this.d.registry.getVm(name);
    if (proc) {
      this.procs.delete(name);
      await proc.quit({ timeoutMs: 10_000 });
    }
    this.d.registry.removeVm(name);
    this.gate.vacate(name);
    if (rec)
      for (const f of ['qmp.sock', 'qmp-admin.sock', 'qemu.pid'])
        await fsp.rm(path.join(this.runDir(rec.id), f), { force: true });
    this.d.emit('vm.left', { vm: name });
  }

  /** The VM's folder moved (storage move; the move holds the VM). */
  configMoved(name: string, configPath: string): void {
    this.d.registry.updateVmPath(name, configPath);
  }

  /**
   * A VM that arrived by live migration runs here now: register it and track its QEMU. Not
   * gated: the incoming move reserved the name and id until now, and nothing can wait here.
   */
  arrivedRunning(
    spec: VmSpec,
    proc: QemuProcess,
    pagingFile: string | null = null,
    arrival?: { from: string; migration: string; since: number },
  ): void {
    // Its HA record passed to this node before the guest ran here (the incoming side's claim).
    this.register(spec);
    this.track(spec.name, proc);
    if (pagingFile) this.usePagingFile(spec.name, proc, pagingFile);
    if (arrival) {
      const a: AfterArrival = {
        from: arrival.from,
        migration: arrival.migration,
        arrivedAt: new Date().toISOString(),
        trouble: null,
      };
      this.arrivals.set(spec.name, a);
      watchAfterArrival(proc, a, arrival.since, (t) => {
        if (this.arrivals.get(spec.name) !== t || !t.trouble) return;
        const message = describeTrouble(spec.name, t, this.d.settings.accelerator());
        this.d.emit('vm.guest-trouble', {
          vm: spec.name,
          what: t.trouble.what,
          afterMs: t.trouble.afterMs,
          from: t.from,
          migration: t.migration,
          message,
        });
      });
    }
    this.d.emit('vm.arrived', { vm: spec.name, pid: proc.pid });
    this.d.emit('vm.state', { vm: spec.name, state: 'running', pid: proc.pid });
  }

  /** A stopped VM whose files this host sees moves here: check (unless told not to) and register it. */
  arrivedStopped(specIn: unknown, opts: { skipStorageCheck?: boolean } = {}): Promise<void> {
    const spec = parseVmSpec(specIn, 'accept the VM');
    return this.gated(spec.name, 'create', () => this.adopt(spec, opts));
  }

  private async adopt(spec: VmSpec, opts: { skipStorageCheck?: boolean }): Promise<void> {
    if (!opts.skipStorageCheck && !this.d.settings.migration().enabled)
      throw new FerryError(
        'E_MIGRATION_DISABLED',
        `Cannot receive VM '${spec.name}' on host '${this.d.host}': migrations are disabled here`,
        {},
      );
    if (this.d.registry.getVm(spec.name) || this.d.registry.getVmById(spec.id))
      throw new FerryError(
        'E_NAME_EXISTS',
        `Cannot receive VM '${spec.name}' on host '${this.d.host}': a VM with that name or id is already here`,
        {},
      );
    if (!opts.skipStorageCheck) await this.checkStorage(spec);
    this.register(spec);
    this.d.emit('vm.arrived', { vm: spec.name });
  }

  private register(spec: VmSpec): void {
    this.d.registry.addVm({
      name: spec.name,
      id: spec.id,
      configPath: spec.configPath,
      createdAt: new Date().toISOString(),
    });
  }
}

/** The paging file a running QEMU was started with (its argv.json), for an agent that re-attaches. */
async function pagingFileOf(runDir: string): Promise<string | null> {
  try {
    const argv = JSON.parse(await fsp.readFile(path.join(runDir, 'argv.json'), 'utf8')) as unknown;
    const args: unknown[] = Array.isArray(argv) ? argv : [];
    const obj = args.find((a): a is string => typeof a === 'string' && a.startsWith('memory-backend-file,'));
    const m = typeof obj === 'string' ? /,mem-path=((?:[^,]|,,)+)/.exec(obj) : null;
    return m?.[1] ? m[1].replaceAll(',,', ',') : null;
  } catch {
    return null;
  }
}
