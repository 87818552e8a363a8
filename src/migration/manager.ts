// Migrations on their source host: create (pre-flight compare first; refused → E_INCOMPATIBLE
// with the report), queue by the host's limit, run the protocol of the VM's kind, cancel,
// and keep the history.
import { DEFAULTS } from '../api/defaults.js';
import { randomUUID } from 'node:crypto';
import { FerryError, AbortedError, NotFoundError, messageOf } from '../errors.js';
import { AgentClient } from '../api/client.js';
import { actions } from '../api/actions.js';
import { peerActions } from '../api/peer-actions.js';
import type { MoveHost } from './host.js';
import type { SlotQueue } from './queue.js';
import { compareVm, type Incompatibility } from './compare.js';
import { Job } from './job.js';
import { runLive } from './live.js';
import type {
  CompareReport,
  Destination,
  MigrationRecord,
  MoveOptions,
  MoveRequest,
  StorageMoveRequest,
} from './schemas.js';
import { sleep } from '../util/exec.js';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { InvalidInputError } from '../errors.js';
import { imageInfo } from '../qemu/img.js';
import { configFile, exists } from '../vm/folder.js';
import type { VmSpec } from '../vm/spec.js';
import type { HostView } from '../api/schemas.js';
import type { IncomingRequest } from '../api/peer-actions.js';
import { assertInUsablePool, isInside, poolOf, poolStatus } from '../storage/pools.js';
import { planDestPaths } from './compare.js';
import { folderFiles, runStorageMove, type StoragePlan } from './storage.js';
import { runOfflineCopy } from './offline.js';
import type { MoveCluster } from './host.js';

export class MigrationManager {
  private jobs = new Map<string, Job>();
  /** Jobs that went through the cluster queue (their position is the cluster's). */
  private clustered = new Set<string>();
  constructor(
    private host: MoveHost,
    private slots: { live: SlotQueue; storage: SlotQueue },
  ) {}

  private destClient(to: Destination): AgentClient {
    const t = this.host.tls;
    return new AgentClient({
      endpoint: to.endpoint,
      host: to.name,
      credentials: { ca: t.ca, cert: t.cert, key: t.key },
    });
  }

  /** The pre-flight check (Compare-VM), run by `compare-vm` and before every move. */
  async compare(
    vmName: string,
    to: Destination,
    options: MoveOptions,
    opts: { signal?: AbortSignal } = {},
  ): Promise<CompareReport> {
    return (await this.gather(vmName, to, options, opts)).report;
  }

  /** Shared nothing without paths: the VM goes to a folder named after it in the destination's local pool. */
  private withDefaults(options: MoveOptions, vmName: string, destView: HostView): MoveOptions {
    if (!options.includeStorage || options.storagePath || options.configPath || options.vhd) return options;
    const local = destView.pools.find((p) => p.kind === 'local');
    return local ? { ...options, storagePath: path.join(local.path, vmName) } : options;
  }

  private async gather(
    vmName: string,
    to: Destination,
    optionsIn: MoveOptions,
    opts: { signal?: AbortSignal } = {},
  ): Promise<{ report: CompareReport; destView: HostView | null; options: MoveOptions }> {
    const e = this.host;
    const spec = await e.vms.spec(vmName);
    const dest = this.destClient(to);
    try {
      let destView: HostView;
      try {
        destView = await dest.call(actions.hostShow, {}, { signal: opts.signal, timeoutMs: 30_000 });
      } catch (err) {
        const m = messageOf(err);
        if (/certificate|self.signed|verify|handshake|alert/i.test(m)) {
          return {
            destView: null,
            options: optionsIn,
            report: report([
              {
                code: 'E_DOMAIN',
                field: 'destination',
                message: `Cannot move VM '${vmName}' to '${to.name}': it is not in this host's domain (its TLS certificate is not from our CA: ${m}); join it to the domain with a host certificate from 'ferry domain issue host ${to.name}'`,
              },
            ]),
          };
        }
        return {
          destView: null,
          options: optionsIn,
          report: report([
            {
              code: 'E_DEST_UNREACHABLE',
              field: 'destination',
              message: `Cannot move VM '${vmName}' to '${to.name}': its agent does not answer at ${to.endpoint} (${m}); start it or check the address`,
            },
          ]),
        };
      }
      const options = this.withDefaults(optionsIn, vmName, destView);
      const [destVms, destCpuModels, source] = await Promise.all([
        dest.call(peerActions.vms, {}, { signal: opts.signal, timeoutMs: 30_000 }),
        dest.call(peerActions.cpuModels, {}, { signal: opts.signal, timeoutMs: 60_000 }),
        e.hostView(),
      ]);
      const diskSizes: Record<string, number> = {};
      if (options.includeStorage) {
        for (const d of spec.disks)
          diskSizes[d.path] = await imageInfo(d.path, { forceShare: true, format: d.format }).then(
            (i) => i.actualSizeBytes,
            () => 0,
          );
      }
      const running = e.vms.proc(vmName) !== null;
      const incompatibilities = compareVm({
        spec,
        running,
        source,
        dest: destView,
        destVms,
        destCpuModels,
        options,
        diskSizes,
      });
      // In a cluster, a paused (drained) node takes no VMs.
      const cluster = e.cluster();
      if (cluster && (await cluster.isPaused(to.name).catch(() => false))) {
        incompatibilities.push({
          code: 'E_NODE_PAUSED',
          field: 'destination',
          message:
            `Cannot move VM '${vmName}' to '${to.name}': that node is paused in cluster '${cluster.name}' ` +
            `(drained for maintenance); choose another node or run 'ferry cluster resume ${to.name}'`,
        });
      }
      return { report: report(incompatibilities), destView, options };
    } finally {
      dest.close();
    }
  }

  async create(req: MoveRequest): Promise<MigrationRecord> {
    const e = this.host;
    // Idempotent with a caller's id: asking again returns the move already made.
    if (req.id && (this.jobs.has(req.id) || e.store.getMigration(req.id))) return this.get(req.id);
    e.vms.record(req.vm);
    // The VM is held from here on (Begin): other operations are refused while it is checked and moved.
    const id = req.id ?? randomUUID();
    e.vms.hold(req.vm, id);
    let rep: CompareReport;
    try {
      rep = await this.compare(req.vm, req.to, req.options);
    } catch (err) {
      e.vms.release(req.vm, id);
      throw err;
    }
    if (!rep.compatible) {
      e.vms.release(req.vm, id);
      throw new FerryError(
        'E_INCOMPATIBLE',
        `Cannot move VM '${req.vm}' to '${req.to.name}': ${rep.incompatibilities.map((i) => i.message.replace(/^Cannot move VM '[^']*' to '[^']*': /, '')).join(' | ')}`,
        {
          context: { incompatibilities: rep.incompatibilities },
        },
      );
    }
    const kind = req.options.includeStorage ? 'shared-nothing' : e.vms.proc(req.vm) !== null ? 'live' : 'offline';
    const job = new Job(
      {
        id,
        vm: req.vm,
        kind,
        source: e.name,
        destination: req.to.name,
        destinationEndpoint: req.to.endpoint,
        policy: req.policy,
        options: req.options,
      },
      { emit: e.emit },
      (r) => e.store.saveMigration(r),
    );
    this.jobs.set(job.id, job);
    job.log(`requested: move to ${req.to.name} (${kind})`);
    job.flush(true);
    void this.run(job, req.to, req.batch);
    return this.view(job);
  }

  /**
   * A clustered VM that moved to a host outside the cluster leaves it: its record goes, so no
   * leader restarts it from the cluster's copy while it runs there.
   */
  private async leftCluster(job: Job, spec: VmSpec, to: string): Promise<void> {
    const cluster = this.host.cluster();
    if (!spec.ha || !cluster) return;
    // When etcd cannot say, the VM stays clustered.
    if (await cluster.isMember(to).catch(() => true)) return;
    await cluster.forgetVm(spec.name).catch(() => undefined);
    job.log(`${spec.name} left cluster '${cluster.name}': ${to} is not a member`);
  }

  /** Moves between two nodes of this host's cluster wait in the cluster's queue. */
  private async clusterQueueFor(to: string): Promise<MoveCluster | null> {
    const cluster = this.host.cluster();
    if (!cluster) return null;
    return (await cluster.isMember(to).catch(() => false)) ? cluster : null;
  }

  private async run(job: Job, to: Destination, batch?: string): Promise<void> {
    const e = this.host;
    const r = job.record;
    const dest = this.destClient(to);
    let slot = false;
    let cq: MoveCluster | null = null;
    try {
      cq = await this.clusterQueueFor(to.name);
      if (cq) {
        const queue = cq;
        this.clustered.add(job.id);
        job.setState('queued', `queued in cluster '${queue.name}'${batch ? ` (${batch.replace(':', ' of ')})` : ''}`);
        await queue.enterQueue(
          { id: job.id, vm: r.vm, from: e.name, to: to.name, priority: r.priority, ...(batch ? { batch } : {}) },
          {
            signal: job.signal,
            onPosition: (p) => {
              r.queuePosition = p;
              job.flush(true);
            },
          },
        );
        job.log('admitted by the cluster scheduler');
      }
      if (!this.slots.live.tryAcquire(job.id)) {
        job.setState('queued', `queued: ${e.name} runs ${e.settings().maxLive} live migrations (max live)`);
        await this.slots.live.acquire(job.id, r.priority, job.signal);
      }
      slot = true;
      // Begin: check again, conditions may have changed while queued.
      const g = await this.gather(r.vm, to, r.options, { signal: job.signal });
      const rep = g.report;
      r.options = g.options;
      if (!rep.compatible) {
        r.incompatibilities = rep.incompatibilities;
        throw new FerryError(
          'E_INCOMPATIBLE',
          `Cannot move VM '${r.vm}' to '${to.name}': ${rep.incompatibilities.map((i) => i.message).join(' | ')}`,
        );
      }
      const spec = await e.vms.spec(r.vm);
      if (r.kind === 'live') {
        const proc = e.vms.proc(r.vm);
        if (!proc)
          throw new FerryError(
            'E_VM_NOT_RUNNING',
            `Cannot live-migrate VM '${r.vm}': it stopped before the move began; move it again (a stopped VM moves offline)`,
          );
        await runLive({
          job,
          spec,
          proc,
          dest,
          sourceName: e.name,
          tls: e.settings().tls,
          tlsFiles: e.tls,
          dataDir: e.dataDir,
          accel: e.accelerator(),
          onSwitched: async () => {
            await e.vms.movedAway(r.vm, proc);
          },
        });
      } else if (r.kind === 'shared-nothing') {
        const proc = e.vms.proc(r.vm);
        const storage = await this.sharedNothingPlan(spec, r.options, g.destView!);
        r.disks = storage.request.disks.map((d) => ({
          id: d.id,
          source: spec.disks.find((x) => x.id === d.id)!.path,
          destination: d.path,
          bytesDone: 0,
          bytesTotal: d.allocatedBytes,
        }));
        const cleanup = async (): Promise<void> => {
          if (r.options.retainSource) job.log('source files kept (--retain-source)');
          else {
            await deleteVmFiles(spec, storage.files);
            job.log('source files deleted');
          }
        };
        if (!proc) {
          // A stopped VM: copy its disks, then the destination registers it.
          await runOfflineCopy({
            job,
            spec,
            dest,
            sourceName: e.name,
            tls: e.settings().tls,
            tlsFiles: e.tls,
            dataDir: e.dataDir,
            storage,
            onDone: async () => {
              await e.vms.movedAway(r.vm, null);
              await cleanup();
            },
          });
          await this.leftCluster(job, spec, to.name);
          job.setState('completed', `completed: ${r.vm} (stopped) and its disks now on ${to.name}`);
          return;
        }
        await runLive({
          job,
          spec,
          proc,
          dest,
          sourceName: e.name,
          tls: e.settings().tls,
          tlsFiles: e.tls,
          dataDir: e.dataDir,
          accel: e.accelerator(),
          storage,
          onSwitched: async () => {
            await e.vms.movedAway(r.vm, proc);
            await cleanup();
          },
        });
      } else {
        job.setState('preparing', `registering ${r.vm} on ${to.name}`);
        await dest.call(
          peerActions.adopt,
          { body: { source: e.name, spec: spec as unknown as Record<string, unknown> } },
          { signal: job.signal },
        );
        job.cancellable = false;
        job.setState('switching-over', 'the destination registered the VM');
        await e.vms.movedAway(r.vm, null);
      }
      await this.leftCluster(job, spec, to.name);
      job.setState(
        'completed',
        `completed: ${r.vm} now on ${to.name}` + (r.downtimeMs !== null ? ` (downtime ${r.downtimeMs} ms)` : ''),
      );
    } catch (err) {
      this.fail(job, err, `the VM stays on ${e.name}`);
    } finally {
      if (slot) this.slots.live.release(job.id);
      if (cq) await cq.leaveQueue(job.id).catch(() => undefined);
      this.clustered.delete(job.id);
      e.vms.release(r.vm, job.id);
      dest.close();
      job.flush(true);
    }
  }

  /** Where every file goes on the destination, and what the destination must create. */
  private async sharedNothingPlan(
    spec: VmSpec,
    options: MoveOptions,
    destView: HostView,
  ): Promise<{ destSpec: VmSpec; request: NonNullable<IncomingRequest['storage']>; files: string[] }> {
    const plan = planDestPaths(spec, options);
    const destPools = destView.pools.map((p) => ({ name: p.name, kind: p.kind, path: p.path }));
    const destSpec: VmSpec = structuredClone(spec);
    destSpec.configPath = plan.configPath;
    destSpec.checkpointPath = plan.checkpointPath;
    destSpec.pagingPath = plan.pagingPath;
    const disks: NonNullable<IncomingRequest['storage']>['disks'] = [];
    for (const pd of plan.disks) {
      const d = destSpec.disks[pd.index]!;
      const info = await imageInfo(d.path, { forceShare: true, format: d.format });
      d.path = pd.dest;
      const pool = poolOf(destPools, pd.dest);
      if (pool) d.pool = pool.name;
      else delete d.pool;
      disks.push({
        id: d.id,
        path: pd.dest,
        format: d.format,
        virtualSizeBytes: info.virtualSizeBytes,
        allocatedBytes: info.actualSizeBytes,
      });
    }
    const files = await folderFiles(spec);
    const request = {
      disks,
      dirs: [...new Set([plan.configPath, plan.checkpointPath, plan.pagingPath])],
      files: await Promise.all(
        files.map(async (f) => ({
          path: path.join(plan.configPath, f),
          base64: (await fsp.readFile(path.join(spec.configPath, f))).toString('base64'),
        })),
      ),
    };
    return { destSpec, request, files };
  }

  /** `ferry move-storage`: a VM's files to new places on this host, running or stopped. */
  async createStorageMove(req: StorageMoveRequest): Promise<MigrationRecord> {
    const e = this.host;
    e.vms.record(req.vm);
    // The VM is held from here on: other operations are refused while its files are checked and moved.
    const id = randomUUID();
    e.vms.hold(req.vm, id);
    let plan: StoragePlan;
    try {
      plan = await this.storagePlan(await e.vms.spec(req.vm), req);
    } catch (err) {
      e.vms.release(req.vm, id);
      throw err;
    }
    const policy = {
      maxDowntimeMs: DEFAULTS.maxDowntimeMs,
      priority: req.priority,
      allowPostcopy: false,
      ...(req.bandwidthMiBps ? { bandwidthMiBps: req.bandwidthMiBps } : {}),
    };
    const job = new Job(
      {
        id,
        vm: req.vm,
        kind: 'storage',
        source: e.name,
        destination: e.name,
        policy,
        options: { includeStorage: true, retainSource: false },
      },
      { emit: e.emit },
      (r) => e.store.saveMigration(r),
    );
    this.jobs.set(job.id, job);
    job.log(`requested: move storage of ${req.vm}`);
    job.flush(true);
    void this.runStorage(job, plan);
    return this.view(job);
  }

  /** Destination of every item, checked before anything starts: inside a usable pool, free, with room. */
  private async storagePlan(spec: VmSpec, req: StorageMoveRequest): Promise<StoragePlan> {
    const e = this.host;
    const pools = e.pools();
    const inFolder = (p: string): boolean => isInside(path.resolve(p), path.resolve(spec.configPath));
    const configPath = req.configPath ?? req.path ?? spec.configPath;
    const follow = (p: string, explicit?: string): string =>
      explicit ?? (inFolder(p) ? path.join(configPath, path.relative(spec.configPath, p)) : (req.path ?? p));
    const plan: StoragePlan = {
      configPath,
      checkpointPath: follow(spec.checkpointPath, req.checkpointPath),
      pagingPath: follow(spec.pagingPath, req.pagingPath),
      disks: {},
    };
    for (const src of Object.keys(req.vhd ?? {})) {
      if (!spec.disks.some((d) => path.resolve(d.path) === path.resolve(src))) {
        throw new InvalidInputError(
          `Cannot move storage of VM '${spec.name}': --vhd names ${src}, which is not one of its disks (${spec.disks.map((d) => d.path).join(', ')})`,
        );
      }
    }
    for (const d of spec.disks) {
      const dest = req.vhd?.[d.path] ?? (req.path ? path.join(req.path, path.basename(d.path)) : undefined);
      if (dest && path.resolve(dest) !== path.resolve(d.path)) plan.disks[d.id] = path.resolve(dest);
    }
    const dests = Object.values(plan.disks);
    if (new Set(dests).size !== dests.length)
      throw new InvalidInputError(
        `Cannot move storage of VM '${spec.name}': two disks would go to the same file; give each its own --vhd destination`,
      );
    if (
      !dests.length &&
      path.resolve(configPath) === path.resolve(spec.configPath) &&
      plan.checkpointPath === spec.checkpointPath &&
      plan.pagingPath === spec.pagingPath
    ) {
      throw new InvalidInputError(
        `Cannot move storage of VM '${spec.name}': everything is already there; give a new --path, --vhd or --config-path`,
      );
    }
    const need = new Map<string, number>();
    for (const [id, dest] of Object.entries(plan.disks)) {
      const pool = await assertInUsablePool(pools, e.name, dest, `destination of disk ${id}`);
      if (await exists(dest))
        throw new InvalidInputError(
          `Cannot move disk '${id}' of VM '${spec.name}' to ${dest}: a file is already there; choose another path`,
          { path: dest },
        );
      const d = spec.disks.find((x) => x.id === id)!;
      const size = await imageInfo(d.path, { forceShare: true, format: d.format }).then((i) => i.actualSizeBytes);
      need.set(pool.name, (need.get(pool.name) ?? 0) + size);
    }
    for (const dir of new Set([plan.configPath, plan.checkpointPath, plan.pagingPath]))
      await assertInUsablePool(pools, e.name, dir, 'destination folder');
    if (path.resolve(configPath) !== path.resolve(spec.configPath) && (await exists(configFile(configPath)))) {
      throw new InvalidInputError(
        `Cannot move the config of VM '${spec.name}' to ${configPath}: that folder already holds a VM; choose another --config-path`,
      );
    }
    for (const [name, bytes] of need) {
      const st = await poolStatus(
        pools.find((p) => p.name === name)!,
        e.name,
      );
      if (bytes > st.freeBytes)
        throw new FerryError(
          'E_DEST_SPACE',
          `Cannot move the disks of VM '${spec.name}': they hold ${(bytes / 1048576).toFixed(0)} MiB but pool '${name}' has ${(st.freeBytes / 1048576).toFixed(0)} MiB free; free space or choose another pool`,
          {},
        );
    }
    return plan;
  }

  private async runStorage(job: Job, plan: StoragePlan): Promise<void> {
    const e = this.host;
    const r = job.record;
    let slot = false;
    try {
      if (!this.slots.storage.tryAcquire(job.id)) {
        job.setState('queued', `queued: ${e.name} runs ${e.settings().maxStorage} storage migrations (max storage)`);
        await this.slots.storage.acquire(job.id, r.priority, job.signal);
      }
      slot = true;
      const spec = await e.vms.spec(r.vm);
      await runStorageMove({
        job,
        spec,
        proc: e.vms.proc(r.vm),
        plan,
        pools: e.pools(),
        ...(r.policy.bandwidthMiBps ? { bandwidthBps: r.policy.bandwidthMiBps * 1024 * 1024 } : {}),
        onConfigMoved: (next) => {
          e.vms.configMoved(r.vm, next.configPath);
        },
      });
      job.setState('completed', `completed: storage of ${r.vm} moved`);
    } catch (err) {
      this.fail(job, err, `the VM keeps its files where they were`);
    } finally {
      if (slot) this.slots.storage.release(job.id);
      e.vms.release(r.vm, job.id);
      job.flush(true);
    }
  }

  private fail(job: Job, err: unknown, cancelNote: string): void {
    const r = job.record;
    if (err instanceof AbortedError || job.signal.aborted) {
      r.error = {
        code: 'E_CANCELLED',
        message: `${r.kind === 'storage' ? 'Storage move' : 'Move'} of VM '${r.vm}' was cancelled; ${cancelNote}`,
      };
      job.setState('cancelled', `cancelled: ${cancelNote}`);
    } else {
      const fe = err instanceof FerryError ? err : null;
      r.error = {
        code: fe?.code ?? 'E_MIGRATION_FAILED',
        message: `${messageOf(err)}${r.state === 'copying-storage' ? ' (while copying storage)' : r.state === 'copying-memory' ? ' (while copying memory)' : ''}`,
      };
      job.setState('failed', `failed in ${r.state}: ${messageOf(err)}`);
    }
  }

  private view(job: Job): MigrationRecord {
    const rec = job.snapshot();
    if (rec.state === 'queued')
      rec.queuePosition = this.clustered.has(job.id)
        ? (this.host.cluster()?.position(job.id) ?? rec.queuePosition)
        : this.slots.live.position(job.id);
    return rec;
  }

  get(id: string): MigrationRecord {
    const job = this.jobs.get(id);
    if (job) return this.view(job);
    const saved = this.host.store.getMigration(id);
    if (!saved)
      throw new NotFoundError(
        'E_MIGRATION_NOT_FOUND',
        `Cannot find migration ${id} on host '${this.host.name}'; 'ferry migration list --all' shows them`,
        { id },
      );
    return saved;
  }

  list(all: boolean): MigrationRecord[] {
    const live = [...this.jobs.values()].filter((j) => all || !j.done).map((j) => this.view(j));
    if (!all) return live;
    const ids = new Set(live.map((r) => r.id));
    return [...live, ...this.host.store.listMigrations(500).filter((r) => !ids.has(r.id))].sort((a, b) =>
      a.createdAt.localeCompare(b.createdAt),
    );
  }

  async cancel(id: string): Promise<MigrationRecord> {
    const job = this.jobs.get(id);
    if (!job) {
      const rec = this.get(id);
      throw new FerryError('E_MIGRATION_DONE', `Cannot cancel migration ${id}: it is ${rec.state}`, {});
    }
    if (job.done)
      throw new FerryError('E_MIGRATION_DONE', `Cannot cancel migration ${id}: it is ${job.record.state}`, {});
    if (!job.cancellable) {
      throw new FerryError(
        'E_CANNOT_CANCEL',
        `Cannot cancel migration ${id} of VM '${job.record.vm}': it is ${job.record.state === 'switching-over' ? 'switching over' : 'in post-copy'}, the VM is already moving to ${job.record.destination}; wait for it to finish`,
        {},
      );
    }
    job.log('cancel requested');
    job.ac.abort(new Error('cancelled by the user'));
    const until = Date.now() + 60_000;
    while (!job.done && Date.now() < until) await sleep(50);
    return this.view(job);
  }

  /** Agent shutdown: abandon running jobs (their VMs stay where they are). */
  shutdown(): void {
    for (const j of this.jobs.values()) if (!j.done && j.cancellable) j.ac.abort(new Error('agent stopping'));
  }
}

/** Deletes a VM's disks and the files of its folder (after it left with copies of them). */
async function deleteVmFiles(spec: VmSpec, files: string[]): Promise<void> {
  for (const d of spec.disks) await fsp.rm(d.path, { force: true });
  await fsp.rm(configFile(spec.configPath), { force: true });
  for (const f of files) await fsp.rm(path.join(spec.configPath, f), { force: true });
  for (const dir of new Set([spec.checkpointPath, spec.pagingPath, spec.configPath]))
    await fsp.rmdir(dir).catch(() => undefined);
}

function report(incompatibilities: Incompatibility[]): CompareReport {
  return { compatible: incompatibilities.length === 0, incompatibilities };
}
