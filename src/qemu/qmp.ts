// Our own QMP client: typed commands, replies matched by id, events kept in a searchable
// history (an event such as BLOCK_JOB_READY may arrive before anyone waits for it), a
// timeout and an AbortSignal on every call, and a closed socket fails every pending call.
import net from 'node:net';
import { FerryError, AbortedError, TimeoutError, asError, messageOf } from '../errors.js';
import { sleep } from '../util/exec.js';
import { pathAppears } from '../util/path-appears.js';
import type { QmpArgs, QmpCommandName, QmpEvent, QmpReturn } from './commands.js';

export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/**
 * QMP answers almost every failure with class GenericError: this driver reads QEMU's text once,
 * here, so callers branch on a typed reason instead of matching messages.
 */
export type QmpFailure = 'image-locked' | 'job-wrong-state' | 'other';

export class QmpError extends FerryError {
  readonly qemuClass: string;
  readonly desc: string;
  constructor(command: string, vm: string, qemuClass: string, desc: string) {
    super('E_QMP', `Cannot run QMP '${command}' on VM '${vm}': ${desc} (${qemuClass})`, {
      context: { command, vm, qemuClass, desc },
    });
    this.qemuClass = qemuClass;
    this.desc = desc;
  }

  get failure(): QmpFailure {
    if (/Failed to get "(write|shared|consistent read)" lock/.test(this.desc)) return 'image-locked';
    if (/cannot accept command verb/.test(this.desc)) return 'job-wrong-state';
    return 'other';
  }
}

/** The typed reason of a QMP failure (any other error: 'other'). */
export function qmpFailure(err: unknown): QmpFailure {
  return err instanceof QmpError ? err.failure : 'other';
}

export class QmpClosedError extends FerryError {
  constructor(vm: string, command?: string, cause?: unknown) {
    super(
      'E_QMP_CLOSED',
      `Cannot ${command ? `run QMP '${command}'` : 'talk QMP'} on VM '${vm}': ` +
        'the QEMU monitor connection is closed (QEMU exited or was killed)',
      {
        context: { vm, command },
        cause,
      },
    );
  }
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  cleanup: () => void;
}
interface Waiter {
  pred: (e: QmpEvent) => boolean;
  resolve: (e: QmpEvent) => void;
  reject: (e: Error) => void;
}

const HISTORY_LIMIT = 20_000;
const DEFAULT_TIMEOUT_MS = 30_000;

export class QmpClient {
  readonly vm: string;
  /** Every event received on this connection (trimmed from the front past 20 000). */
  readonly history: QmpEvent[] = [];
  private eventCount = 0;
  private socket: net.Socket;
  private buf = '';
  private nextId = 1;
  private pending = new Map<string, Pending>();
  private waiters = new Set<Waiter>();
  private listeners = new Set<(e: QmpEvent | null) => void>();
  private greeting: Promise<unknown>;
  private greetingResolve!: (v: unknown) => void;
  private closedErr: Error | null = null;
  readonly closed: Promise<void>;

  private constructor(socket: net.Socket, vm: string) {
    this.vm = vm;
    this.socket = socket;
    this.greeting = new Promise((r) => {
      this.greetingResolve = r;
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    this.closed = new Promise((resolve) => {
      socket.once('close', () => {
        this.onClose();
        resolve();
      });
    });
    socket.on('error', (err) => {
      this.closedErr ??= err;
    });
  }

  /**
   * Connects to a QMP unix socket, retrying while QEMU is still creating it, reads the
   * greeting and enters command mode.
   */
  static async connect(path: string, opts: CallOptions & { vm?: string } = {}): Promise<QmpClient> {
    const vm = opts.vm ?? path;
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const started = Date.now();
    const until = started + timeoutMs;
    let lastErr: unknown;
    for (;;) {
      if (opts.signal?.aborted) throw new AbortedError(`connect to QMP of VM '${vm}'`, opts.signal.reason);
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(path);
          s.once('connect', () => {
            s.removeAllListeners('error');
            resolve(s);
          });
          s.once('error', reject);
        });
        const client = new QmpClient(socket, vm);
        try {
          await client.withDeadline(
            client.greeting,
            'read the QMP greeting',
            Math.max(1000, until - Date.now()),
            opts.signal,
          );
          await client.execute('qmp_capabilities', undefined, {
            signal: opts.signal,
            timeoutMs: Math.max(1000, until - Date.now()),
          });
        } catch (err) {
          client.close();
          throw err;
        }
        return client;
      } catch (err) {
        lastErr = err;
        const code = (err as NodeJS.ErrnoException).code;
        if (err instanceof FerryError || (code !== 'ENOENT' && code !== 'ECONNREFUSED')) throw err;
        if (Date.now() >= until) {
          throw new FerryError(
            'E_QMP_CONNECT',
            `Cannot connect to the QMP socket of VM '${vm}' at ${path}: ${messageOf(lastErr)}; ` +
              'check that QEMU is running',
            {
              context: { vm, path },
              cause: lastErr,
            },
          );
        }
        // QEMU makes the socket 40-200 ms after its start here (the greeting then comes by itself),
        // and a VM's start and a move's destination wait on it: woken by inotify when it is made;
        // one made but not yet listening is asked again soon.
        const soon = Date.now() - started < 2000 ? 5 : 50;
        if (code === 'ENOENT')
          await pathAppears(path, Math.min(250, Math.max(1, until - Date.now())), {
            unwatchedMs: soon,
            ...(opts.signal ? { signal: opts.signal } : {}),
          });
        else await sleep(soon, opts.signal);
      }
    }
  }

  get isClosed(): boolean {
    return this.socket.destroyed;
  }

  /** Sends a typed command and resolves with its `return` value. */
  execute<K extends QmpCommandName>(command: K, args?: QmpArgs<K>, opts: CallOptions = {}): Promise<QmpReturn<K>> {
    return this.executeRaw(command, args as Record<string, unknown> | undefined, opts) as Promise<QmpReturn<K>>;
  }

  /** Sends any command (for the ones not typed in commands.ts). */
  executeRaw(command: string, args?: Record<string, unknown>, opts: CallOptions = {}): Promise<unknown> {
    const what = `run QMP '${command}' on VM '${this.vm}'`;
    if (this.socket.destroyed) return Promise.reject(new QmpClosedError(this.vm, command, this.closedErr));
    if (opts.signal?.aborted) return Promise.reject(new AbortedError(what, opts.signal.reason));
    const id = `ferry-${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        done();
        reject(new TimeoutError(what, timeoutMs, { vm: this.vm, command }));
      }, timeoutMs);
      const onAbort = (): void => {
        done();
        reject(new AbortedError(what, opts.signal?.reason));
      };
      const done = (): void => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        this.pending.delete(id);
      };
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, { command, resolve, reject, cleanup: done });
      const msg: Record<string, unknown> = { execute: command, id };
      if (args !== undefined) msg.arguments = args;
      this.socket.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Resolves with the first event in history at or after `since` matching `pred`, else the next one to arrive. */
  waitEvent(
    pred: (e: QmpEvent) => boolean,
    opts: CallOptions & { since?: number; what?: string } = {},
  ): Promise<QmpEvent> {
    const since = opts.since ?? 0;
    const found = this.history.find((e) => e.index >= since && pred(e));
    if (found) return Promise.resolve(found);
    const what = opts.what ?? `wait for a QMP event on VM '${this.vm}'`;
    if (this.socket.destroyed) return Promise.reject(new QmpClosedError(this.vm, undefined, this.closedErr));
    return this.withDeadline(
      new Promise<QmpEvent>((resolve, reject) => {
        const w: Waiter = {
          pred,
          resolve: (e) => {
            this.waiters.delete(w);
            resolve(e);
          },
          reject: (e) => {
            this.waiters.delete(w);
            reject(e);
          },
        };
        this.waiters.add(w);
      }),
      what,
      opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      opts.signal,
      () => {
        for (const w of this.waiters) if (w.pred === pred) this.waiters.delete(w);
      },
    );
  }

  /** Index the next event will get: pass it as `since` to ignore older events. */
  get eventMark(): number {
    return this.eventCount;
  }

  /** Live events as an async iterator; ends when the connection closes or `signal` aborts. */
  async *events(opts: { signal?: AbortSignal } = {}): AsyncGenerator<QmpEvent> {
    const queue: (QmpEvent | null)[] = [];
    let wake: (() => void) | null = null;
    const listener = (e: QmpEvent | null): void => {
      queue.push(e);
      wake?.();
    };
    const onAbort = (): void => {
      queue.push(null);
      wake?.();
    };
    this.listeners.add(listener);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (this.socket.destroyed) queue.push(null);
    try {
      for (;;) {
        while (queue.length === 0)
          await new Promise<void>((r) => {
            wake = r;
          });
        wake = null;
        const e = queue.shift();
        if (!e) return;
        yield e;
      }
    } finally {
      this.listeners.delete(listener);
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  close(): void {
    this.socket.destroy();
  }

  private withDeadline<T>(
    p: Promise<T>,
    what: string,
    ms: number,
    signal?: AbortSignal,
    onCancel?: () => void,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        finish();
        onCancel?.();
        reject(new TimeoutError(what, ms, { vm: this.vm }));
      }, ms);
      const onAbort = (): void => {
        finish();
        onCancel?.();
        reject(new AbortedError(what, signal?.reason));
      };
      const finish = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      p.then(
        (v) => {
          finish();
          resolve(v);
        },
        (e: unknown) => {
          finish();
          reject(asError(e));
        },
      );
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      this.onMessage(msg);
    }
  }

  private onMessage(msg: Record<string, unknown>): void {
    if ('QMP' in msg) {
      this.greetingResolve(msg.QMP);
      return;
    }
    if (typeof msg.event === 'string') {
      const e: QmpEvent = { event: msg.event, index: this.eventCount++ };
      if (msg.data) e.data = msg.data as Record<string, unknown>;
      if (msg.timestamp) e.timestamp = msg.timestamp as QmpEvent['timestamp'];
      this.history.push(e);
      if (this.history.length > HISTORY_LIMIT) this.history.splice(0, this.history.length - HISTORY_LIMIT);
      for (const w of [...this.waiters]) if (w.pred(e)) w.resolve(e);
      for (const l of this.listeners) l(e);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id ? this.pending.get(id) : undefined;
    if (!p) return; // a reply to a call that already timed out or was aborted
    p.cleanup();
    if ('error' in msg) {
      const e = msg.error as { class?: string; desc?: string };
      p.reject(new QmpError(p.command, this.vm, e.class ?? 'GenericError', e.desc ?? 'unknown error'));
    } else {
      p.resolve(msg.return);
    }
  }

  private onClose(): void {
    for (const p of [...this.pending.values()]) {
      p.cleanup();
      p.reject(new QmpClosedError(this.vm, p.command, this.closedErr));
    }
    for (const w of [...this.waiters]) w.reject(new QmpClosedError(this.vm, undefined, this.closedErr));
    for (const l of this.listeners) l(null);
  }
}
