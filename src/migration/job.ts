// One migration job on its source host: the record users see (shared/CLI.md), an
// AbortController for cancel, and the events it emits as it goes (Xen Orchestra's task
// objects: progress events in, renderers out).
import { randomUUID } from 'node:crypto';
import type { Emit } from '../api/events.js';
import type { FerryError } from '../errors.js';
import type { AgentClient } from '../api/client.js';
import { peerActions, IncomingRequest, type IncomingView } from '../api/peer-actions.js';
import { sleep } from '../util/exec.js';
import type { z } from 'zod';

type IncomingRequestInput = z.input<typeof IncomingRequest>;
import { TERMINAL, type MigrationRecord, type MigrationState, type MoveOptions, type PolicyInput } from './schemas.js';

export class Job {
  record: MigrationRecord;
  readonly ac = new AbortController();
  /** False from switch-over on (and during post-copy): cancel is refused. */
  cancellable = true;
  private lastEmit = 0;

  constructor(
    init: {
      id?: string;
      vm: string;
      kind: MigrationRecord['kind'];
      source: string;
      destination: string;
      destinationEndpoint?: string;
      policy: PolicyInput;
      options: MoveOptions;
    },
    private bus: { emit: Emit },
    private persist: (r: MigrationRecord) => void,
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
    };
  }

  get id(): string {
    return this.record.id;
  }
  get done(): boolean {
    return TERMINAL.includes(this.record.state);
  }
  get signal(): AbortSignal {
    return this.ac.signal;
  }

  setState(state: MigrationState, message?: string): void {
    if (this.done) return;
    this.record.state = state;
    if (state !== 'queued') this.record.queuePosition = null;
    if (!this.record.startedAt && state !== 'queued') this.record.startedAt = new Date().toISOString();
    if (TERMINAL.includes(state)) {
      this.record.finishedAt = new Date().toISOString();
      this.record.totalMs = this.record.startedAt
        ? Date.parse(this.record.finishedAt) - Date.parse(this.record.startedAt)
        : 0;
      this.record.etaSeconds = state === 'completed' ? 0 : null;
      if (state === 'completed') this.record.progress = 1;
    }
    this.log(message ?? `state ${state}`);
    this.flush(true);
  }

  log(message: string): void {
    this.record.events.push({ at: new Date().toISOString(), message });
    if (this.record.events.length > 200) this.record.events.splice(0, this.record.events.length - 200);
  }

  /** Publishes the record (throttled to ~4/s unless forced) and saves it. */
  flush(force = false): void {
    const now = Date.now();
    if (!force && now - this.lastEmit < 250) return;
    this.lastEmit = now;
    this.persist(this.record);
    this.bus.emit('migration', { vm: this.record.vm, migration: this.snapshot() });
  }

  snapshot(): MigrationRecord {
    return structuredClone(this.record);
  }
}

/**
 * Asks the destination to prepare, waiting in state `queued` while it is at its own
 * migration limit (E_HOST_BUSY) — the move stays queued until it has a free slot.
 */
export async function prepareWhenFree(job: Job, dest: AgentClient, body: IncomingRequestInput): Promise<IncomingView> {
  const r = job.record;
  for (;;) {
    try {
      const v = await dest.call(peerActions.prepare, { body }, { signal: job.signal, timeoutMs: 120_000 });
      if (r.state === 'queued') job.setState('preparing', `preparing ${r.destination}`);
      return v;
    } catch (err) {
      if ((err as FerryError).code !== 'E_HOST_BUSY') throw err;
      if (r.state !== 'queued') job.setState('queued', `waiting: ${r.destination} is at its migration limit`);
      await sleep(1000, job.signal);
    }
  }
}

/** Folds mirror progress into the record (per disk and in total); returns done and total bytes. */
export function foldMirrorProgress(
  r: MigrationRecord,
  ps: Array<{ diskId: string; done: number; total: number }>,
  startedAt: number,
): { done: number; total: number; rate: number } {
  let done = 0;
  let total = 0;
  for (const p of ps) {
    const disk = r.disks.find((x) => x.id === p.diskId);
    if (disk) {
      disk.bytesDone = p.done;
      disk.bytesTotal = p.total;
    }
    done += p.done;
    total += p.total;
  }
  const rate = done / Math.max(0.001, (Date.now() - startedAt) / 1000);
  r.bytesTransferred = done;
  r.remainingBytes = total - done;
  r.rate = { transferBps: Math.round(rate), dirtyBps: 0 };
  return { done, total, rate };
}
