// One migration job on its source host: the record users see (shared/CLI.md), an
// AbortController for cancel, and the events it emits as it goes (Xen Orchestra's task
// objects: progress events in, renderers out). Its state only changes through `enter`, which
// follows the state machine of phases.ts; whether it may be cancelled is read from there.
import { randomUUID } from 'node:crypto';
import type { Emit } from '../api/events.js';
import { FerryError } from '../errors.js';
import { canTransition, isCancellable, isTerminal } from './phases.js';
import type { RunnerSink } from './runner.js';
import type { JournalEntry } from './journal.js';
import { IncomingStep, MAX_INCOMING_STEPS, type IncomingView } from '../api/peer-actions.js';
import {
  MAX_STEP_TIMES,
  type MigrationRecord,
  type MigrationState,
  type MoveOptions,
  type PolicyInput,
  type StepTime,
  tenthMs,
} from './schemas.js';

/** Publishes at most this often while copying (progress samples are coalesced). */
const EMIT_EVERY_MS = 250;
const KEEP_EVENTS = 200;

export interface JobInit {
  id?: string;
  vm: string;
  kind: MigrationRecord['kind'];
  source: string;
  destination: string;
  destinationEndpoint?: string;
  policy: PolicyInput;
  options: MoveOptions;
  requestedBy?: MigrationRecord['requestedBy'];
}

export class Job implements RunnerSink {
  record: MigrationRecord;
  private readonly ac = new AbortController();
  private lastEmit = 0;
  private journalSeq = 0;
  /** The latest data each step recorded (what its undo, or a later step, needs). */
  private stepData = new Map<string, Record<string, unknown>>();
  /** The destination's steps: where they start on our clock, and how many are in the record. */
  private dest: { base: number; seen: number } | null = null;
  /** The record's createdAt as a performance.now() of this process. */
  private createdPerf: number | undefined;

  constructor(
    init: JobInit,
    private readonly emit: Emit,
    private readonly persist: (r: MigrationRecord) => void,
    private readonly appendJournal: (id: string, e: JournalEntry, opts?: { durable?: boolean }) => void,
  ) {
    this.record = {
      id: init.id ?? randomUUID(),
      vm: init.vm,
      kind: init.kind,
      source: init.source,
      destination: init.destination,
      destinationEndpoint: init.destinationEndpoint ?? null,
      state: 'queued',
      priority: init.policy.priority,
      queuePosition: null,
      progress: 0,
      etaSeconds: null,
      verdict: null,
      downtimeMs: null,
      totalMs: null,
      bytesTransferred: 0,
      passes: 0,
      rate: { transferBps: 0, dirtyBps: 0 },
      remainingBytes: null,
      downtimeLimitMs: null,
      throttlePct: 0,
      policy: init.policy,
      options: init.options,
      error: null,
      createdAt: new Date().toISOString(),
      startedAt: null,
      finishedAt: null,
      events: [],
      incompatibilities: [],
      disks: [],
      requestedBy: init.requestedBy ?? null,
      prediction: null,
      postcopy: null,
    };
  }

  get id(): string {
    return this.record.id;
  }
  get phase(): MigrationState {
    return this.record.state;
  }
  get done(): boolean {
    return isTerminal(this.record.state);
  }
  get cancellable(): boolean {
    return isCancellable(this.record.state);
  }
  get signal(): AbortSignal {
    return this.ac.signal;
  }

  /** Moves to `state` (the table must allow it); a terminal state also fixes the times. */
  enter(state: MigrationState, message?: string): void {
    const r = this.record;
    if (this.done) return;
    if (!canTransition(r.state, state)) {
      throw new FerryError('E_INTERNAL', `Cannot move migration ${r.id} from ${r.state} to ${state}: not in the table`);
    }
    const changed = r.state !== state;
    r.state = state;
    if (state !== 'queued') r.queuePosition = null;
    if (!r.startedAt && state !== 'queued') r.startedAt = new Date().toISOString();
    if (isTerminal(state)) {
      r.finishedAt = new Date().toISOString();
      r.totalMs = r.startedAt ? Date.parse(r.finishedAt) - Date.parse(r.startedAt) : 0;
      r.etaSeconds = state === 'completed' ? 0 : null;
      if (state === 'completed') r.progress = 1;
    }
    if (changed || message) this.log(message ?? `state ${state}`);
    this.flush(true);
  }

  /**
   * Asks to cancel: allowed only in a phase the table marks cancellable. The steps see the
   * signal; the runner then undoes what was done.
   */
  cancel(reason: string): void {
    if (this.done) {
      throw new FerryError('E_MIGRATION_DONE', `Cannot cancel migration ${this.id}: it is ${this.record.state}`);
    }
    if (!this.cancellable) {
      const why = this.record.state === 'post-copy' ? 'in post-copy' : 'switching over';
      throw new FerryError(
        'E_CANNOT_CANCEL',
        `Cannot cancel migration ${this.id} of VM '${this.record.vm}': it is ${why}, ` +
          `the VM is already moving to ${this.record.destination}; wait for it to finish`,
      );
    }
    this.log(`cancel requested: ${reason}`);
    this.ac.abort(new Error(reason));
  }

  log(message: string): void {
    const ev = this.record.events;
    ev.push({ at: new Date().toISOString(), message });
    if (ev.length > KEEP_EVENTS) ev.splice(0, ev.length - KEEP_EVENTS);
  }

  timed(step: string, startedAt: number, ms: number, failed: boolean): void {
    this.addStep({ name: step, on: 'source', atMs: this.sinceCreated(startedAt), ms, ...(failed ? { failed } : {}) });
  }

  /**
   * The destination's steps not yet seen (its answers to Prepare and to finish list them all), placed
   * from when this host sent the Prepare (`sentAt`: performance.now()); the destination times them
   * from that request's arrival.
   */
  destinationSteps(steps: IncomingView['steps'], sentAt?: number): void {
    if (sentAt !== undefined && !this.dest) this.dest = { base: this.sinceCreated(sentAt), seen: 0 };
    // What a peer sent, unchecked until here (the client checks no answer): only well-formed steps.
    if (!this.dest || !Array.isArray(steps)) return;
    for (const raw of steps.slice(this.dest.seen, MAX_INCOMING_STEPS)) {
      const p = IncomingStep.safeParse(raw, { jitless: true });
      if (!p.success) continue;
      const t = p.data;
      const { name, ms, failed } = t;
      this.addStep({ name, on: 'destination', atMs: this.dest.base + t.atMs, ms, ...(failed ? { failed } : {}) });
    }
    this.dest.seen = Math.max(this.dest.seen, steps.length);
  }

  /** ms from the record's creation to `perfAt` (a performance.now() of this process). */
  private sinceCreated(perfAt: number): number {
    // One reading of the wall clock per job: later ones would jitter by its millisecond.
    this.createdPerf ??= performance.now() - (Date.now() - Date.parse(this.record.createdAt));
    return perfAt - this.createdPerf;
  }

  private addStep(t: StepTime): void {
    const steps = (this.record.steps ??= []);
    if (steps.length >= MAX_STEP_TIMES) return;
    // createdAt has whole milliseconds: a first step may seem to start a fraction before it.
    steps.push({ ...t, atMs: tenthMs(Math.max(0, t.atMs)), ms: tenthMs(t.ms) });
  }

  journal(entry: Omit<JournalEntry, 'seq' | 'at'>, opts?: { durable?: boolean }): void {
    if (entry.data) this.stepData.set(entry.step, entry.data);
    this.appendJournal(this.id, { ...entry, seq: ++this.journalSeq, at: new Date().toISOString() }, opts);
  }

  /** What step `name` recorded last (empty when it did not run). */
  journalData(name: string): Record<string, unknown> {
    return this.stepData.get(name) ?? {};
  }

  /** Recovery: continue a journal read back from the store. */
  resumeJournal(entries: JournalEntry[]): void {
    for (const e of entries) {
      this.journalSeq = Math.max(this.journalSeq, e.seq);
      if (e.data) this.stepData.set(e.step, e.data);
    }
  }

  /** Publishes the record (coalesced to EMIT_EVERY_MS unless forced) and saves it. */
  flush(force = false): void {
    const now = Date.now();
    if (!force && now - this.lastEmit < EMIT_EVERY_MS) return;
    this.lastEmit = now;
    this.persist(this.record);
    this.emit('migration', { vm: this.record.vm, migration: this.snapshot() });
  }

  snapshot(): MigrationRecord {
    return structuredClone(this.record);
  }
}
