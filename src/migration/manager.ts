// Migrations on their source host: create (pre-flight compare first; refused → E_INCOMPATIBLE
// with the report), queue by the host's limit, run the protocol of the VM's kind, cancel,
// and keep the history.
import { FerryError, AbortedError, NotFoundError, messageOf } from '../errors.js';
import { AgentClient } from '../api/client.js';
import { actions } from '../api/actions.js';
import { peerActions } from '../api/peer-actions.js';
import type { Engine } from '../agent/engine.js';
import { loadVm } from '../vm/folder.js';
import { compareVm, type Incompatibility } from './compare.js';
import { Job } from './job.js';
import { runLive } from './live.js';
import type { CompareReport, Destination, MigrationRecord, MoveOptions, MoveRequest } from './schemas.js';
import { sleep } from '../util/exec.js';

export class MigrationManager {
  private jobs = new Map<string, Job>();
  constructor(private engine: Engine) {}

  private destClient(to: Destination): AgentClient {
    const t = this.engine.cfg.tls;
    return new AgentClient({ endpoint: to.endpoint, host: to.name, credentials: { ca: t.ca, cert: t.cert, key: t.key } });
  }

  /** The pre-flight check (Compare-VM), run by `compare-vm` and before every move. */
  async compare(vmName: string, to: Destination, options: MoveOptions, opts: { signal?: AbortSignal } = {}): Promise<CompareReport> {
    const e = this.engine;
    const rec = e.vmRecord(vmName);
    const spec = await loadVm(rec.configPath);
    const dest = this.destClient(to);
    try {
      let destView;
      try {
        destView = await dest.call(actions.hostShow, {}, { signal: opts.signal, timeoutMs: 30_000 });
      } catch (err) {
        const m = messageOf(err);
        if (/certificate|self.signed|verify|handshake|alert/i.test(m)) {
          return report([{ code: 'E_DOMAIN', field: 'destination', message: `Cannot move VM '${vmName}' to '${to.name}': it is not in this host's domain (its TLS certificate is not from our CA: ${m}); join it to the domain with a host certificate from 'ferry domain issue host ${to.name}'` }]);
        }
        return report([{ code: 'E_DEST_UNREACHABLE', field: 'destination', message: `Cannot move VM '${vmName}' to '${to.name}': its agent does not answer at ${to.endpoint} (${m}); start it or check the address` }]);
      }
      const [destVms, destCpuModels, source] = await Promise.all([
        dest.call(peerActions.vms, {}, { signal: opts.signal, timeoutMs: 30_000 }),
        dest.call(peerActions.cpuModels, {}, { signal: opts.signal, timeoutMs: 60_000 }),
        e.hostView(),
      ]);
      const incompatibilities = compareVm({
        spec, running: e.isRunning(vmName), source, dest: destView, destVms, destCpuModels, options,
      });
      if (options.includeStorage) {
        incompatibilities.push({ code: 'E_UNSUPPORTED', field: 'includeStorage', message: `Cannot move VM '${vmName}' with its storage yet: shared-nothing migration is not built; put its disks on a shared pool and move the VM only` });
      }
      return report(incompatibilities);
    } finally {
      dest.close();
    }
  }

  async create(req: MoveRequest): Promise<MigrationRecord> {
    const e = this.engine;
    e.vmRecord(req.vm);
    e.assertNotBusy(req.vm);
    const rep = await this.compare(req.vm, req.to, req.options);
    if (!rep.compatible) {
      throw new FerryError('E_INCOMPATIBLE', `Cannot move VM '${req.vm}' to '${req.to.name}': ${rep.incompatibilities.map((i) => i.message.replace(/^Cannot move VM '[^']*' to '[^']*': /, '')).join(' | ')}`, {
        context: { incompatibilities: rep.incompatibilities }, userError: true,
      });
    }
    const kind = e.isRunning(req.vm) ? 'live' : 'offline';
    const job = new Job({ vm: req.vm, kind, source: e.name, destination: req.to.name, policy: req.policy, options: req.options }, e.events, (r) => e.registry.saveMigration(r));
    this.jobs.set(job.id, job);
    e.markBusy(req.vm, job.id);
    job.log(`requested: move to ${req.to.name} (${kind})`);
    job.flush(true);
    void this.run(job, req.to);
    return this.view(job);
  }

  private async run(job: Job, to: Destination): Promise<void> {
    const e = this.engine;
    const r = job.record;
    const dest = this.destClient(to);
    let slot = false;
    try {
      if (!e.slots.tryAcquire(job.id)) {
        job.setState('queued', `queued: ${e.name} runs ${e.migrationSettings().maxLive} live migrations (max live)`);
        await e.slots.acquire(job.id, r.priority, job.signal);
      }
      slot = true;
      // Begin: check again, conditions may have changed while queued.
      const rep = await this.compare(r.vm, to, r.options, { signal: job.signal });
      if (!rep.compatible) {
        r.incompatibilities = rep.incompatibilities;
        throw new FerryError('E_INCOMPATIBLE', `Cannot move VM '${r.vm}' to '${to.name}': ${rep.incompatibilities.map((i) => i.message).join(' | ')}`);
      }
      const spec = await loadVm(e.vmRecord(r.vm).configPath);
      if (r.kind === 'live') {
        const proc = e.runningProc(r.vm);
        if (!proc) throw new FerryError('E_VM_NOT_RUNNING', `Cannot live-migrate VM '${r.vm}': it stopped before the move began; move it again (a stopped VM moves offline)`);
        await runLive({
          job, spec, proc, dest, sourceName: e.name, tls: e.migrationSettings().tls, tlsFiles: e.cfg.tls, dataDir: e.cfg.dataDir,
          onSwitched: async () => { await e.releaseMigratedVm(r.vm, proc); },
        });
      } else {
        job.setState('preparing', `registering ${r.vm} on ${to.name}`);
        await dest.call(peerActions.adopt, { body: { source: e.name, spec: spec as unknown as Record<string, unknown> } }, { signal: job.signal });
        job.cancellable = false;
        job.setState('switching-over', 'the destination registered the VM');
        await e.releaseMigratedVm(r.vm, null);
      }
      job.setState('completed', `completed: ${r.vm} now on ${to.name}` + (r.downtimeMs !== null ? ` (downtime ${r.downtimeMs} ms)` : ''));
    } catch (err) {
      if (err instanceof AbortedError || job.signal.aborted) {
        r.error = { code: 'E_CANCELLED', message: `Move of VM '${r.vm}' to '${to.name}' was cancelled; the VM stays on ${e.name}` };
        job.setState('cancelled', 'cancelled: the VM stays on the source');
      } else {
        const fe = err instanceof FerryError ? err : null;
        r.error = { code: fe?.code ?? 'E_MIGRATION_FAILED', message: messageOf(err) };
        job.setState('failed', `failed: ${messageOf(err)}`);
      }
    } finally {
      if (slot) e.slots.release(job.id);
      e.clearBusy(r.vm, job.id);
      dest.close();
      job.flush(true);
    }
  }

  private view(job: Job): MigrationRecord {
    const rec = job.snapshot();
    if (rec.state === 'queued') rec.queuePosition = this.engine.slots.position(job.id);
    return rec;
  }

  get(id: string): MigrationRecord {
    const job = this.jobs.get(id);
    if (job) return this.view(job);
    const saved = this.engine.registry.getMigration(id);
    if (!saved) throw new NotFoundError('E_MIGRATION_NOT_FOUND', `Cannot find migration ${id} on host '${this.engine.name}'; 'ferry migration list --all' shows them`, { id });
    return saved;
  }

  list(all: boolean): MigrationRecord[] {
    const live = [...this.jobs.values()].filter((j) => all || !j.done).map((j) => this.view(j));
    if (!all) return live;
    const ids = new Set(live.map((r) => r.id));
    return [...live, ...this.engine.registry.listMigrations(500).filter((r) => !ids.has(r.id))]
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  async cancel(id: string): Promise<MigrationRecord> {
    const job = this.jobs.get(id);
    if (!job) {
      const rec = this.get(id);
      throw new FerryError('E_MIGRATION_DONE', `Cannot cancel migration ${id}: it is ${rec.state}`, { userError: true });
    }
    if (job.done) throw new FerryError('E_MIGRATION_DONE', `Cannot cancel migration ${id}: it is ${job.record.state}`, { userError: true });
    if (!job.cancellable) {
      throw new FerryError('E_CANNOT_CANCEL', `Cannot cancel migration ${id} of VM '${job.record.vm}': it is ${job.record.state === 'switching-over' ? 'switching over' : 'in post-copy'}, the VM is already moving to ${job.record.destination}; wait for it to finish`, { userError: true });
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

function report(incompatibilities: Incompatibility[]): CompareReport {
  return { compatible: incompatibilities.length === 0, incompatibilities };
}
