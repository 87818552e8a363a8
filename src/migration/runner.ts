// The one runner of every move's steps. A move kind is a list of steps; each step runs in a
// phase of the state machine (phases.ts), is journalled before it acts, may record what its
// undo needs as it goes, and has an undo that tolerates a half-done step. On a failure the
// phase decides: undo every step that began, newest first, in a scope no cancel can cut
// short; or resolve (past the point of no return: find out who runs the VM); or report. After
// an agent restart, recovery replays the same journal into the same undo and resolve code.
import { FerryError, messageOf } from '../errors.js';
import { PHASES } from './phases.js';
import type { JournalEntry } from './journal.js';
import type { MigrationState } from './schemas.js';

export type StepData = Record<string, unknown>;

export interface StepScope {
  signal: AbortSignal;
  log: (message: string) => void;
  /** Journals what the undo needs so far (call right after each sub-action that leaves something behind). */
  record: (data: StepData) => void;
}

export interface UndoScope {
  /** Not linked to the move's cancel: undo always runs to its end (each call has its own timeout). */
  signal: AbortSignal;
  log: (message: string) => void;
}

export interface Step<C> {
  name: string;
  /** The phase the move is in while this step runs. */
  phase: MigrationState;
  /** Skip the step for this move (e.g. no disks to copy). Decided when the step comes up. */
  when?(ctx: C): boolean;
  /** Does the work; what it returns is journalled with 'done' (merged over what it recorded). */
  run(ctx: C, s: StepScope): Promise<StepData | undefined>;
  /** Takes back what the step did (also a half-done step: data is what it recorded). Idempotent. */
  undo?(ctx: C, data: StepData, s: UndoScope): Promise<void>;
  /** Runs once the move ended, whatever the outcome (slots, queue entries, the VM's gate). */
  release?(ctx: C, data: StepData): Promise<void> | void;
}

/** After a failure in a 'resolve' phase: what really happened. */
export type Resolution = 'completed' | 'undo' | 'failed';

export interface MoveKind<C> {
  name: string;
  steps: ReadonlyArray<Step<C>>;
  /** For phases whose failure rule is 'resolve' (switch-over). */
  resolve?(ctx: C, err: unknown, s: UndoScope): Promise<Resolution>;
}

/** Where the runner writes (a Job on the source, the incoming bookkeeping on the destination). */
export interface RunnerSink {
  readonly id: string;
  readonly phase: MigrationState;
  /** Moves the state machine (validated against the table); no-op when already there. */
  enter(phase: MigrationState, message?: string): void;
  log(message: string): void;
  /** A step ended: its start (`performance.now()` then) and length, for the record's `steps`. */
  timed?(step: string, startedAt: number, ms: number, failed: boolean): void;
  /** `durable: false`: an entry recovery can do without (MoveStore.journalAppend). */
  journal(entry: Omit<JournalEntry, 'seq' | 'at'>, opts?: { durable?: boolean }): void;
  readonly signal: AbortSignal;
}

const UNDO_TIMEOUT_MS = 120_000;

export interface RunOutcome {
  /** completed: every step ran (or resolve said the move completed). */
  result: 'completed' | 'undone' | 'failed';
  error: unknown;
}

export class StepRunner<C> {
  /** Steps that began, in order, with the data recorded so far. */
  private started: Array<{ step: Step<C>; data: StepData }> = [];

  constructor(
    private readonly kind: MoveKind<C>,
    private readonly ctx: C,
    private readonly sink: RunnerSink,
  ) {}

  /** Runs every step; on failure applies the phase's rule. Never throws: the outcome says. */
  async run(): Promise<RunOutcome> {
    try {
      for (const step of this.kind.steps) {
        if (step.when && !step.when(this.ctx)) continue;
        this.sink.enter(step.phase);
        await this.runStep(step);
      }
      return { result: 'completed', error: null };
    } catch (err) {
      return await this.fail(err);
    } finally {
      await this.releaseAll();
    }
  }

  private async runStep(step: Step<C>): Promise<void> {
    const entry = { step, data: {} as StepData };
    // Timed from its journal entry to its end's: the durable writes are part of what a step costs.
    const t0 = performance.now();
    let failed = true;
    this.sink.journal({ step: step.name, event: 'begin' });
    this.started.push(entry);
    const scope: StepScope = {
      signal: this.sink.signal,
      log: (m) => this.sink.log(m),
      record: (data) => {
        entry.data = { ...entry.data, ...data };
        this.sink.journal({ step: step.name, event: 'data', data: entry.data });
      },
    };
    try {
      const out = await step.run(this.ctx, scope);
      if (out) entry.data = { ...entry.data, ...out };
      // Recovery reads a step's begin and its data; an end that adds no data may wait for the
      // next step's begin to reach the disk (one fsync less per step on the move's path).
      const news = out !== undefined && Object.keys(out).length > 0;
      this.sink.journal({ step: step.name, event: 'done', data: entry.data }, { durable: news });
      failed = false;
    } catch (err) {
      this.sink.journal({ step: step.name, event: 'failed', message: messageOf(err) });
      throw err;
    } finally {
      this.sink.timed?.(step.name, t0, performance.now() - t0, failed);
    }
  }

  private async fail(err: unknown): Promise<RunOutcome> {
    const rule = PHASES[this.sink.phase].onFailure;
    const scope = undoScope(this.sink);
    if (rule === 'resolve' && this.kind.resolve) {
      let r: Resolution;
      try {
        r = await this.kind.resolve(this.ctx, err, scope);
      } catch (resolveErr) {
        return { result: 'failed', error: resolveErr };
      }
      if (r === 'completed') return { result: 'completed', error: err };
      if (r === 'failed') return { result: 'failed', error: err };
    } else if (rule === 'report') {
      return { result: 'failed', error: err };
    }
    await undoSteps(this.kind, this.ctx, this.started, this.sink, scope);
    return { result: 'undone', error: err };
  }

  private async releaseAll(): Promise<void> {
    for (const { step, data } of [...this.started].reverse()) {
      if (!step.release) continue;
      try {
        await step.release(this.ctx, data);
      } catch (err) {
        this.sink.log(`releasing ${step.name}: ${messageOf(err)}`);
      }
    }
  }
}

function undoScope(sink: RunnerSink): UndoScope {
  return { signal: AbortSignal.timeout(UNDO_TIMEOUT_MS), log: (m) => sink.log(m) };
}

/** Undoes the given started steps newest first; each undo is journalled; failures are logged, not thrown. */
export async function undoSteps<C>(
  kind: MoveKind<C>,
  ctx: C,
  started: Array<{ step: Step<C>; data: StepData }>,
  sink: Pick<RunnerSink, 'log' | 'journal'>,
  scope: UndoScope,
): Promise<void> {
  // Every step's undo runs, whatever an earlier one or the journal did: a journal that cannot
  // be written must not leave a QEMU, a file or a slot behind.
  const note = (entry: Omit<JournalEntry, 'seq' | 'at'>): void => {
    try {
      sink.journal(entry);
    } catch (err) {
      sink.log(`cannot journal '${entry.event}' of ${entry.step}: ${messageOf(err)}`);
    }
  };
  for (const { step, data } of [...started].reverse()) {
    if (!step.undo) continue;
    try {
      await step.undo(ctx, data, scope);
      note({ step: step.name, event: 'undone' });
    } catch (err) {
      sink.log(`undoing ${step.name}: ${messageOf(err)}`);
      note({ step: step.name, event: 'failed', message: `undo: ${messageOf(err)}` });
    }
  }
}

/** The steps a journal says began and were not undone, newest data each, matched to the kind's steps. */
export function startedFromJournal<C>(
  kind: MoveKind<C>,
  entries: JournalEntry[],
): Array<{ step: Step<C>; data: StepData }> {
  const out: Array<{ step: Step<C>; data: StepData }> = [];
  for (const e of entries) {
    const step = kind.steps.find((s) => s.name === e.step);
    if (!step) {
      throw new FerryError('E_RECOVERY', `Cannot read the journal of move kind '${kind.name}': no step '${e.step}'`);
    }
    const last = [...out].reverse().find((x) => x.step === step);
    if (e.event === 'begin') out.push({ step, data: {} });
    else if ((e.event === 'data' || e.event === 'done') && last) last.data = e.data ?? last.data;
    else if (e.event === 'undone' && last) out.splice(out.lastIndexOf(last), 1);
  }
  return out;
}
