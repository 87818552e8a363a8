// Moves on this host: compare, create (pre-flight compare first; refused → E_INCOMPATIBLE with
// the report), run each through its kind's steps (runner.ts), cancel where the phase table
// allows, keep the history, and after an agent restart finish or undo what a previous life
// left open, from the same journal with the same steps.
import { DEFAULTS } from '../api/defaults.js';
import { measureDirtyRate } from './dirty-rate.js';
import { guestRamInUse } from '../qemu/guest-ram.js';
import { defaultFinishWithinMs, START_DOWNTIME_MS, TCG_START_DOWNTIME_MS } from './policy.js';
import { describePrediction, linkFromHistory, predictMove } from './predict.js';
import { FerryError, NotFoundError, codeOf, messageOf } from '../errors.js';
import { sleep } from '../util/exec.js';
import { gather, incompatibleError } from './begin.js';
import type { MoveHost } from './host.js';
import { IncomingManager } from './incoming.js';
import { Job, type JobInit } from './job.js';
import { liveKind } from './kinds/live.js';
import { offlineKind } from './kinds/offline.js';
import { sharedNothingKind } from './kinds/shared-nothing.js';
import { storageKind, type StorageCtx } from './kinds/storage.js';
import { keptCopiesOf, keptCopyAt } from './kinds/storage-resume.js';
import { isTerminal, PHASES } from './phases.js';
import { storagePlan, type StoragePlan } from './plan.js';
import { SlotQueue } from './queue.js';
import { StepRunner, startedFromJournal, undoSteps, type MoveKind, type RunOutcome } from './runner.js';
import type {
  CompareReport,
  Destination,
  MigrationRecord,
  MoveOptions,
  MoveRequest,
  Prediction,
  StorageMoveRequest,
} from './schemas.js';
import { PolicyInput } from './schemas.js';
import { PeerClients, type SourceCtx } from './source.js';
import type { VmSpec } from '../vm/spec.js';

const KINDS: Record<Exclude<MigrationRecord['kind'], 'storage'>, MoveKind<SourceCtx>> = {
  live: liveKind,
  'shared-nothing': sharedNothingKind,
  offline: offlineKind,
};

const MiB = 1024 * 1024;
/** A prediction older than this no longer describes the guest a move would copy. */
const PREDICTION_TTL_MS = 10 * 60_000;
const predictionKey = (vm: string, to: string): string => `${vm}\n${to}`;
const round1 = (x: number): number => Math.round(x * 10) / 10;

export class MigrationManager {
  private jobs = new Map<string, Job>();
  /** Live-migration slots of this host: outgoing and incoming count alike. */
  readonly slots: SlotQueue;
  /** Storage-migration slots. */
  readonly storageSlots: SlotQueue;
  readonly incoming: IncomingManager;
  private readonly peers: PeerClients;
  /** The last prediction per VM and destination: a move that follows it soon carries it in its record. */
  private readonly predictions = new Map<string, Prediction>();

  constructor(private readonly host: MoveHost) {
    this.slots = new SlotQueue(() => host.settings().maxLive);
    this.storageSlots = new SlotQueue(() => host.settings().maxStorage);
    this.incoming = new IncomingManager(host, this.slots);
    this.peers = new PeerClients(host);
  }

  /** The limits changed: start what may start now. */
  settingsChanged(): void {
    this.slots.pump();
    this.storageSlots.pump();
  }

  /** Names and ids here, arriving ones included (the destination's name check). */
  vmIds(): Array<{ name: string; id: string }> {
    return [...this.host.vms.ids(), ...this.incoming.arriving()];
  }

  /** The pre-flight check (Compare-VM), run by `compare-vm` and before every move. */
  async compare(
    vm: string,
    to: Destination,
    options: MoveOptions,
    opts: { signal?: AbortSignal; predict?: boolean; policy?: PolicyInput } = {},
  ): Promise<CompareReport> {
    // Refused before anything is asked of the destination: bad input changes nothing.
    if (opts.predict) this.runningForPrediction(vm);
    const { report } = await this.gather(vm, to, options, opts);
    if (!opts.predict) return report;
    return { ...report, prediction: await this.predict(vm, to, opts.policy, opts.signal) };
  }

  private runningForPrediction(vm: string) {
    this.host.vms.record(vm);
    const proc = this.host.vms.proc(vm);
    if (!proc)
      throw new FerryError(
        'E_VM_NOT_RUNNING',
        `Cannot predict the move of VM '${vm}': it is not running on host '${this.host.name}', and only a ` +
          `running guest has memory to copy live (a stopped VM moves by copying its files); start it ` +
          `('ferry vm start ${vm}') or leave out --predict`,
        { context: { vm } },
      );
    return proc;
  }

  /**
   * Measures the guest's dirty rate (QEMU, about a second, no pause) and predicts the move from
   * it, the link's rate learnt from earlier moves and the policy the move would run with.
   */
  private async predict(vm: string, to: Destination, input: PolicyInput | undefined, signal?: AbortSignal) {
    const proc = this.runningForPrediction(vm);
    const spec = await this.host.vms.spec(vm);
    const policy = PolicyInput.parse(input ?? {});
    const rate = await measureDirtyRate(proc.qmp, { vm, ...(signal ? { signal } : {}) });
    const inUse = await guestRamInUse(proc.pid, spec.memoryMiB, signal ? { signal } : {});
    const wire = inUse && { share: Math.min(1, inUse.bytes / (spec.memoryMiB * MiB)), from: inUse.from };
    const link = linkFromHistory(this.host.store.listMigrations(200), to.name, Date.now());
    const cap = policy.bandwidthMiBps ? policy.bandwidthMiBps * MiB : Infinity;
    const linkBps = Math.min(link.linkBps, cap);
    const finishWithinMs = policy.finishWithinS ? policy.finishWithinS * 1000 : defaultFinishWithinMs(spec.memoryMiB);
    const outcome = predictMove({
      memoryMiB: spec.memoryMiB,
      dirtyBps: rate.bytesPerSecond,
      linkBps,
      overheadMs: link.overheadMs,
      maxDowntimeMs: policy.maxDowntimeMs,
      startDowntimeMs: this.host.accelerator() === 'tcg' ? TCG_START_DOWNTIME_MS : START_DOWNTIME_MS,
      finishWithinMs,
      allowPostcopy: policy.allowPostcopy,
      ...(wire ? { wireShare: wire.share } : {}),
      ...(inUse?.byPart ? { wireByPart: inUse.byPart } : {}),
      ...(link.zeroBps ? { zeroBps: link.zeroBps } : {}),
      ...(link.switchMs !== undefined ? { switchMs: link.switchMs } : {}),
      ...(rate.workingSetBytes !== undefined ? { workingSetBytes: rate.workingSetBytes } : {}),
    });
    const p: Omit<Prediction, 'summary'> = {
      madeAt: new Date().toISOString(),
      memoryMiB: spec.memoryMiB,
      dirtyRateMiBps: round1(rate.bytesPerSecond / MiB),
      dirtyMode: rate.mode,
      dirtySampleMs: rate.sampleMs,
      ...(rate.workingSetBytes !== undefined ? { workingSetMiB: round1(rate.workingSetBytes / MiB) } : {}),
      linkMiBps: round1(linkBps / MiB),
      linkSource: cap < link.linkBps ? 'bandwidth' : link.source,
      ...(link.zeroBps && link.zeroSource
        ? { zeroMiBps: round1(link.zeroBps / MiB), zeroSource: link.zeroSource }
        : {}),
      ...(link.switchMs !== undefined ? { switchMs: Math.round(link.switchMs) } : {}),
      overheadMs: Math.round(link.overheadMs),
      ...(wire ? { wireShare: Math.round(wire.share * 1000) / 1000, wireShareFrom: wire.from } : {}),
      maxDowntimeMs: policy.maxDowntimeMs,
      finishWithinMs,
      ...outcome,
    };
    const prediction: Prediction = { ...p, summary: describePrediction(p) };
    this.predictions.set(predictionKey(vm, to.name), prediction);
    return prediction;
  }

  private gather(vm: string, to: Destination, options: MoveOptions, opts: { signal?: AbortSignal } = {}) {
    this.host.vms.record(vm);
    return gather(this.host, this.peers.get(to), vm, to, options, opts);
  }

  private newJob(init: JobInit): Job {
    const store = this.host.store;
    return new Job(
      init,
      this.host.emit,
      (r) => {
        store.saveMigration(r);
      },
      (id, e, o) => {
        store.journalAppend(id, e, o);
      },
    );
  }

  async create(req: MoveRequest, by?: MigrationRecord['requestedBy']): Promise<MigrationRecord> {
    const host = this.host;
    // Idempotent with a caller's id: asking again returns the move already made.
    if (req.id && (this.jobs.has(req.id) || host.store.getMigration(req.id))) return this.get(req.id);
    host.vms.record(req.vm);
    const pre = await this.gather(req.vm, req.to, req.options);
    if (!pre.report.compatible) throw incompatibleError(req.vm, req.to.name, pre.report);
    const running = host.vms.proc(req.vm) !== null;
    const kind = req.options.includeStorage ? 'shared-nothing' : running ? 'live' : 'offline';
    const job = this.newJob({
      ...(req.id ? { id: req.id } : {}),
      vm: req.vm,
      kind,
      source: host.name,
      destination: req.to.name,
      destinationEndpoint: req.to.endpoint,
      policy: req.policy,
      options: req.options,
      requestedBy: by ?? null,
    });
    // A prediction made shortly before for this VM and host goes into the record, beside the outcome.
    const predicted = this.predictions.get(predictionKey(req.vm, req.to.name));
    this.predictions.delete(predictionKey(req.vm, req.to.name));
    if (kind === 'live' && predicted && Date.now() - Date.parse(predicted.madeAt) <= PREDICTION_TTL_MS)
      job.record.prediction = predicted;
    host.vms.hold(req.vm, job.id);
    this.jobs.set(job.id, job);
    job.log(`requested: move to ${req.to.name} (${kind})`);
    job.flush(true);
    const ctx = this.sourceCtx(job, req.to, req.batch);
    ctx.preflight = pre;
    void this.drive(job, KINDS[kind], ctx, `the VM stays on ${host.name}`);
    return this.view(job);
  }

  private sourceCtx(job: Job, to: Destination, batch?: string): SourceCtx {
    return {
      host: this.host,
      job,
      to,
      dest: this.peers.get(to),
      slots: this.slots,
      spec: null,
      destView: null,
      options: job.record.options,
      plan: null,
      proc: null,
      prep: null,
      mirrors: [],
      memSpan: [0.05, 0.97],
      ...(batch ? { batch } : {}),
    };
  }

  /** `ferry move-storage`: a VM's files to new places on this host, running or stopped. */
  async createStorageMove(req: StorageMoveRequest, by?: MigrationRecord['requestedBy']): Promise<MigrationRecord> {
    const host = this.host;
    host.vms.record(req.vm);
    const spec = await host.vms.spec(req.vm);
    const running = host.vms.proc(req.vm) !== null;
    const plan = await storagePlan(host.pools(), host.name, spec, req, {
      running,
      kept: keptCopyAt(host.dataDir, spec.id),
      others: keptCopiesOf(host.dataDir, spec.id),
    });
    const job = this.newJob({
      vm: req.vm,
      kind: 'storage',
      source: host.name,
      destination: host.name,
      policy: {
        maxDowntimeMs: DEFAULTS.maxDowntimeMs,
        priority: req.priority,
        allowPostcopy: false,
        ...(req.bandwidthMiBps ? { bandwidthMiBps: req.bandwidthMiBps } : {}),
      },
      options: { includeStorage: true, retainSource: false, ...(req.resumable ? { resumable: req.resumable } : {}) },
      requestedBy: by ?? null,
    });
    host.vms.hold(req.vm, job.id);
    this.jobs.set(job.id, job);
    job.log(`requested: move storage of ${req.vm}`);
    if (plan.copy && Object.keys(plan.disks).length) {
      job.record.diskCopy = plan.copy.method;
      const how = { mirror: 'the mirror', resumable: 'resumable backup passes', offline: 'qemu-img' }[plan.copy.method];
      job.log(`disks copied by ${how}: ${plan.copy.why}`);
    }
    job.flush(true);
    const ctx: StorageCtx = { host, job, slots: this.storageSlots, plan, spec, proc: host.vms.proc(req.vm) };
    void this.drive(job, storageKind, ctx, 'the VM keeps its files where they were');
    return this.view(job);
  }

  /** Runs a move's steps to its end and records the outcome; the VM's gate is released at the end. */
  private async drive<C>(job: Job, kind: MoveKind<C>, ctx: C, stays: string): Promise<void> {
    let out: RunOutcome;
    try {
      out = await new StepRunner(kind, ctx, job).run();
    } catch (err) {
      out = { result: 'failed', error: err };
    }
    this.finish(job, out, stays);
    this.host.vms.release(job.record.vm, job.id);
  }

  private finish(job: Job, out: RunOutcome, stays: string): void {
    const r = job.record;
    if (out.result === 'completed') {
      if (out.error) job.log(`recovered from: ${messageOf(out.error)}`);
      const downtime = r.downtimeMs !== null ? ` (downtime ${r.downtimeMs} ms)` : '';
      job.enter(
        'completed',
        `completed: ${r.vm} ${r.kind === 'storage' ? 'storage moved' : `now on ${r.destination}`}${downtime}`,
      );
    } else if (job.signal.aborted && (out.result === 'undone' || codeOf(out.error) === 'E_ABORTED')) {
      // Cancelled: whatever error the abort surfaced as in the step that ran (a QMP reply to a
      // cancelled block job, a closed NBD connection), the move was undone because it was asked to.
      if (codeOf(out.error) !== 'E_ABORTED') job.log(`the cancel surfaced as: ${messageOf(out.error)}`);
      const what = r.kind === 'storage' ? 'Storage move' : 'Move';
      r.error = { code: 'E_CANCELLED', message: `${what} of VM '${r.vm}' was cancelled; ${stays}` };
      job.enter('cancelled', `cancelled: ${stays}`);
    } else {
      const where =
        r.state === 'copying-storage'
          ? ' (while copying storage)'
          : r.state === 'copying-memory'
            ? ' (while copying memory)'
            : '';
      r.error = {
        code: codeOf(out.error) === 'E_INTERNAL' ? 'E_MIGRATION_FAILED' : codeOf(out.error),
        message: `${messageOf(out.error)}${where}`,
      };
      job.enter('failed', `failed in ${r.state}: ${messageOf(out.error)}`);
    }
    this.host.store.journalDrop(job.id);
  }

  private view(job: Job): MigrationRecord {
    const rec = job.snapshot();
    if (rec.state === 'queued') {
      rec.queuePosition = this.host.cluster()?.position(job.id) ?? this.slots.position(job.id) ?? rec.queuePosition;
    }
    return rec;
  }

  get(id: string): MigrationRecord {
    const job = this.jobs.get(id);
    if (job) return this.view(job);
    const saved = this.host.store.getMigration(id);
    if (!saved) {
      throw new NotFoundError(
        'E_MIGRATION_NOT_FOUND',
        `Cannot find migration ${id} on host '${this.host.name}'; 'ferry migration list --all' shows them`,
        { id },
      );
    }
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

  /** Cancels a move where the phase table allows it and waits (up to a minute) for its undo. */
  async cancel(id: string, opts: { signal?: AbortSignal } = {}): Promise<MigrationRecord> {
    const job = this.jobs.get(id);
    if (!job) {
      const rec = this.get(id);
      throw new FerryError('E_MIGRATION_DONE', `Cannot cancel migration ${id}: it is ${rec.state}`);
    }
    job.cancel('cancelled by the user');
    const until = Date.now() + 60_000;
    while (!job.done && Date.now() < until && !opts.signal?.aborted) await sleep(50);
    return this.view(job);
  }

  /** Agent shutdown: abandon moves that may still be undone (their VMs stay where they are). */
  shutdown(): void {
    for (const j of this.jobs.values()) if (!j.done && j.cancellable) j.cancel('agent stopping');
  }

  /**
   * Agent start: incoming moves a previous life never finished are removed; moves this host
   * was the source of are finished or undone according to the phase they were in — the same
   * steps, the same journal, the same rules as a failure while running.
   */
  async recover(): Promise<void> {
    await this.incoming.recover();
    const open = this.host.store
      .listMigrations(1000)
      .filter((r) => !isTerminal(r.state) && r.source === this.host.name);
    for (const rec of open) {
      const job = this.newJob({
        id: rec.id,
        vm: rec.vm,
        kind: rec.kind,
        source: rec.source,
        destination: rec.destination,
        ...(rec.destinationEndpoint ? { destinationEndpoint: rec.destinationEndpoint } : {}),
        policy: rec.policy,
        options: rec.options,
      });
      job.record = rec;
      const entries = this.host.store.journalRead(rec.id);
      job.resumeJournal(entries);
      job.log('the source agent restarted during this move: recovering');
      let out: RunOutcome;
      try {
        out = await this.recoverOne(job, rec, entries);
      } catch (err) {
        out = {
          result: 'failed',
          error: new FerryError(
            'E_RECOVERY',
            `Cannot recover the interrupted move of VM '${rec.vm}': ${messageOf(err)}; check where it ` +
              `runs with 'ferry vm list'`,
            { cause: err },
          ),
        };
      }
      if (out.result === 'undone') {
        const what =
          rec.kind === 'storage'
            ? `The storage move of VM '${rec.vm}'`
            : `The move of VM '${rec.vm}' to '${rec.destination}'`;
        out = {
          result: 'failed',
          error: new FerryError(
            'E_AGENT_RESTARTED',
            `${what} was interrupted by a restart of the agent on '${rec.source}' and rolled back; the VM stays ` +
              `${rec.kind === 'storage' ? 'with its files where they were' : `on ${rec.source}`}; move it again`,
          ),
        };
      }
      this.finish(job, out, `the VM stays on ${this.host.name}`);
    }
  }

  private async recoverOne(
    job: Job,
    rec: MigrationRecord,
    entries: ReturnType<MoveHost['store']['journalRead']>,
  ): Promise<RunOutcome> {
    const rule = PHASES[rec.state].onFailure;
    const scope = { signal: AbortSignal.timeout(300_000), log: (m: string) => job.log(m) };
    const restarted = new FerryError('E_AGENT_RESTARTED', `the agent on '${rec.source}' restarted`);
    if (rec.kind === 'storage') {
      const dirs = job.journalData('dirs');
      const plan = dirs.plan as StoragePlan | undefined;
      const spec = dirs.spec as VmSpec | undefined;
      if (!plan || !spec) return { result: 'undone', error: restarted }; // nothing was made yet
      const ctx: StorageCtx = {
        host: this.host,
        job,
        slots: this.storageSlots,
        plan,
        spec,
        proc: this.host.vms.proc(rec.vm),
      };
      return this.applyRule(rule, storageKind, ctx, entries, restarted, scope);
    }
    const to = { name: rec.destination, endpoint: rec.destinationEndpoint ?? '' };
    const ctx = this.sourceCtx(job, to, undefined);
    ctx.proc = this.host.vms.proc(rec.vm);
    ctx.spec = await this.host.vms.spec(rec.vm).catch(() => null);
    const compare = job.journalData('compare');
    const files = compare.files as string[] | undefined;
    // The copy chosen at Begin is in the record (copy-choice.ts).
    const copy = { method: rec.diskCopy ?? (ctx.proc ? 'mirror' : 'offline'), why: 'as the record says' } as const;
    if (ctx.spec && files)
      ctx.plan = {
        destSpec: ctx.spec,
        request: { disks: [], dirs: [], files: [] },
        files,
        fileData: [],
        chain: null,
        copy,
      };
    // A move with a checkpoint chain learns the stream's address only once the chain is there.
    const prep = { ...job.journalData('prepare'), ...job.journalData('chain') };
    if (typeof prep.uri === 'string') {
      const nbd = (prep.nbd as { host: string; port: number } | null | undefined) ?? null;
      ctx.prep = { uri: prep.uri, nbd, tlsHostname: rec.destination };
    }
    return await this.applyRule(rule, KINDS[rec.kind], ctx, entries, restarted, scope);
  }

  private async applyRule<C>(
    rule: (typeof PHASES)[keyof typeof PHASES]['onFailure'],
    kind: MoveKind<C>,
    ctx: C,
    entries: ReturnType<MoveHost['store']['journalRead']>,
    err: FerryError,
    scope: { signal: AbortSignal; log: (m: string) => void },
  ): Promise<RunOutcome> {
    const job = (ctx as { job: Job }).job;
    const started = startedFromJournal(kind, entries);
    if (rule === 'resolve' && kind.resolve) {
      const r = await kind.resolve(ctx, err, scope);
      if (r === 'completed') return { result: 'completed', error: err };
      if (r === 'failed') return { result: 'failed', error: err };
    } else if (rule === 'report') {
      return {
        result: 'failed',
        error: new FerryError(
          'E_RECOVERY',
          `VM '${job.record.vm}' was in ${job.record.state} when the agent restarted; it cannot be rolled back: ` +
            `check it on ${job.record.destination}`,
        ),
      };
    }
    await undoSteps(kind, ctx, started, job, scope);
    for (const { step, data } of [...started].reverse()) await step.release?.(ctx, data);
    return { result: 'undone', error: err };
  }
}
