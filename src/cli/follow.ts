// Follows a migration through its source host's event stream (issue 12 §4): subscribe first,
// then start the move, render each `migration` event of its id, read the record once after a
// reconnect or a reset, and end when the record does. Ctrl-C: the first press cancels the move
// when its phase allows it (and waits for the rollback) or says why it cannot; the next one
// stops following and leaves the move running (`ferry migration wait ID` follows it again).
import { actions } from './actions.js';
import type { AgentClient } from '../api/client.js';
import { FerryError, messageOf } from '../errors.js';
import { isCancellable } from '../migration/phases.js';
import type { MigrationRecord } from '../migration/schemas.js';
import { TERMINAL } from '../migration/states.js';
import { RecordProgress } from './record-progress.js';
import { openEventStream, type EventStream } from './event-stream.js';
import type { InterruptSource } from './interrupt.js';
import type { MoveRenderer } from './render/index.js';

export type FollowOutcome =
  | { kind: 'ended'; record: MigrationRecord }
  /** Ctrl-C: the CLI stopped following; the move goes on (with a cancel pending if one was asked). */
  | { kind: 'detached'; record: MigrationRecord; cancelRequested: boolean };

export interface FollowOptions {
  /** The record the move was created with (move-vm); without it the record is read once. */
  initial?: MigrationRecord;
  renderer: MoveRenderer;
  interrupts?: InterruptSource;
  /** What the first Ctrl-C does: cancel the move (move-vm, move-storage) or stop following (wait). */
  firstInterrupt: 'cancel' | 'detach';
}

const isDone = (r: RecordProgress): boolean => TERMINAL.includes(r.state);

/** Is `a` a later state of the record than `b`? (Log entries only grow; an end is final.) */
export function isNewer(a: RecordProgress, b: RecordProgress): boolean {
  if (isDone(b)) return false;
  if (isDone(a)) return true;
  const la = a.events.at(-1)?.at ?? '';
  const lb = b.events.at(-1)?.at ?? '';
  return la !== lb ? la > lb : a.events.length >= b.events.length;
}

/** One host's migration events, subscribed before a move starts so that none is missed. */
export class MigrationWatch {
  /** Each migration's newest state: a record read from the agent, or an event's (checked as RecordProgress). */
  private readonly latest = new Map<string, RecordProgress>();
  private target: string | null = null;
  private gap = false;
  private lost: FerryError | null = null;
  private wake: () => void = () => undefined;
  private readonly stream: EventStream;

  private constructor(readonly client: AgentClient) {
    this.stream = openEventStream(client, {
      wants: (raw) => raw.type === 'migration' && (this.target === null || raw.migration?.id === this.target),
      check: (raw) => {
        // jitless: zod compiling a fast check costs more than the few dozen events of a move save.
        const r = RecordProgress.safeParse((raw as { migration?: unknown }).migration, { jitless: true });
        return r.success ? r.data : null;
      },
      onEvent: (m) => {
        if (this.target !== null && m.id !== this.target) return;
        const cur = this.latest.get(m.id);
        if (!cur || isNewer(m, cur)) this.latest.set(m.id, m);
        this.wake();
      },
      onGap: () => {
        this.gap = true;
        this.wake();
      },
      onLost: (err) => {
        this.lost = err;
        this.wake();
      },
    });
  }

  /** Resolves once the agent has subscribed the stream; `signal` gives up an opening (a rejection). */
  static async open(client: AgentClient, o: { signal?: AbortSignal } = {}): Promise<MigrationWatch> {
    const w = new MigrationWatch(client);
    const stop = (): void => {
      w.close();
    };
    o.signal?.addEventListener('abort', stop, { once: true });
    try {
      await w.stream.ready;
    } catch (err) {
      w.close();
      throw new FerryError(
        'E_AGENT_UNREACHABLE',
        `Cannot follow migrations on host '${client.host}': its event stream did not open (${messageOf(err)}); ` +
          'check its agent, or use --no-wait',
        { context: { host: client.host }, cause: err },
      );
    } finally {
      o.signal?.removeEventListener('abort', stop);
    }
    return w;
  }

  close(): void {
    this.stream.close();
  }

  /**
   * The whole record of a state that was followed. An event carries the agent's whole record,
   * as `migration show` answers it; the CLI checks neither against the record's full schema
   * (it trusts its agent's answers, as for every other call): building that schema and
   * compiling its check cost the CLI ~70 ms of CPU per move, for a record it only prints.
   */
  private whole(r: RecordProgress): MigrationRecord {
    return r as MigrationRecord;
  }

  async follow(id: string, o: FollowOptions): Promise<FollowOutcome> {
    this.target = id;
    for (const k of [...this.latest.keys()]) if (k !== id) this.latest.delete(k);
    // Changed from callbacks: kept in an object so that the loop reads current values.
    const st: {
      current: RecordProgress | null;
      reading: boolean;
      readError: FerryError | null;
      cancelRequested: boolean;
      detach: boolean;
    } = { current: null, reading: false, readError: null, cancelRequested: false, detach: false };
    const accept = (r: RecordProgress | undefined): void => {
      if (!r || (st.current && !isNewer(r, st.current))) return;
      st.current = r;
      o.renderer.record(r);
    };
    accept(o.initial);

    // A read of the record (at the start without one, after a gap): one at a time, again if
    // another gap came meanwhile. Transient failures wait for the stream's next reconnect.
    const read = (): void => {
      if (st.reading) return;
      st.reading = true;
      this.gap = false;
      this.client
        .call(actions.migrationShow, { params: { id } }, { timeoutMs: 30_000 })
        .then(
          (r) => {
            this.latest.set(id, r);
          },
          (err: unknown) => {
            if (err instanceof FerryError && err.code === 'E_MIGRATION_NOT_FOUND') st.readError = err;
          },
        )
        .finally(() => {
          st.reading = false;
          this.wake();
        });
    };
    if (!o.initial) read();

    const presses: number[] = [];
    const stopListening = o.interrupts?.listen((n) => {
      presses.push(n);
      this.wake();
    });
    // Presses made before following (Ctrl-C while the move was being created) count too.
    for (let n = 1; n <= (o.interrupts?.presses ?? 0); n++) presses.push(n);
    const cancel = new AbortController();

    const onPress = (n: number, r: RecordProgress | null): void => {
      if (o.firstInterrupt === 'detach' || n > 1) {
        st.detach = true;
        return;
      }
      const what = r ? `the ${r.kind === 'storage' ? 'storage move' : 'move'} of VM '${r.vm}'` : `migration ${id}`;
      if (r && !isCancellable(r.state)) {
        o.renderer.note(
          `Ctrl-C: ${what} is ${r.state}, past the point where it can be cancelled; ` +
            'following it to the end (Ctrl-C again to stop following)',
        );
        return;
      }
      o.renderer.note(`Ctrl-C: cancelling ${what}; waiting for the rollback (Ctrl-C again to stop waiting)`);
      st.cancelRequested = true;
      this.client
        .call(actions.migrationCancel, { params: { id } }, { timeoutMs: 120_000, signal: cancel.signal })
        .then(
          (rec) => {
            this.latest.set(id, rec);
          },
          (err: unknown) => {
            const code = (err as FerryError).code;
            if (code === 'E_MIGRATION_DONE' || cancel.signal.aborted) return;
            st.cancelRequested = false;
            o.renderer.note(
              code === 'E_CANNOT_CANCEL'
                ? `${messageOf(err)}; following it to the end (Ctrl-C again to stop following)`
                : `Cannot cancel ${what}: ${messageOf(err)}; following it (Ctrl-C again to stop following)`,
            );
          },
        )
        .finally(() => {
          this.wake();
        });
    };

    try {
      for (;;) {
        accept(this.latest.get(id));
        if (st.current && isDone(st.current)) return { kind: 'ended', record: this.whole(st.current) };
        if (st.readError) throw st.readError;
        if (this.lost) throw this.lost;
        for (const n of presses.splice(0)) onPress(n, st.current);
        if (st.detach) {
          if (!st.current) throw new FerryError('E_ABORTED', `Cannot follow migration ${id}: interrupted`);
          return { kind: 'detached', record: this.whole(st.current), cancelRequested: st.cancelRequested };
        }
        if (this.gap) read();
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        this.wake = () => undefined;
      }
    } finally {
      stopListening?.();
      cancel.abort();
    }
  }
}
