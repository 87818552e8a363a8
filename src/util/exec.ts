import { execFile } from 'node:child_process';
import { FerryError, TimeoutError, AbortedError } from '../errors.js';

export interface RunOptions {
  signal?: AbortSignal;
  /** Kill the command after this long (default 60 s). */
  timeoutMs?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Written to the command's stdin (then closed). */
  input?: string;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

export class CommandFailedError extends FerryError {
  constructor(
    cmd: string,
    args: readonly string[],
    detail: string,
    cause?: unknown,
    extra: Record<string, unknown> = {},
  ) {
    super('E_COMMAND_FAILED', `Cannot run ${cmd} ${args.join(' ')}: ${detail}`, {
      context: { cmd, args, ...extra },
      cause,
    });
  }
}

/** Runs a program to completion; never waits forever and honours `signal`. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const what = `run ${cmd}`;
  if (opts.signal?.aborted) return Promise.reject(new AbortedError(what, opts.signal.reason));
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      {
        cwd: opts.cwd,
        env: opts.env,
        timeout: timeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: 64 * 1024 * 1024,
        signal: opts.signal,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        if (!err) {
          resolve({ stdout, stderr });
          return;
        }
        const e = err as NodeJS.ErrnoException & { killed?: boolean; code?: unknown };
        if (opts.signal?.aborted) reject(new AbortedError(what, opts.signal.reason));
        else if (e.killed) reject(new TimeoutError(what, timeoutMs, { cmd, args }));
        else if (e.code === 'ENOENT')
          reject(new CommandFailedError(cmd, args, `${cmd} is not installed; run scripts/setup`, err));
        else {
          const detail = (stderr || stdout || e.message).trim().split('\n').slice(-5).join(' / ');
          reject(new CommandFailedError(cmd, args, detail, err, { exitCode: e.code, stderr }));
        }
      },
    );
    child.stdin?.end(opts.input);
  });
}

/** A signal that fires on the caller's abort or after `ms`, whichever is first. */
export function deadline(ms: number, signal?: AbortSignal): AbortSignal {
  const t = AbortSignal.timeout(ms);
  return signal ? AbortSignal.any([signal, t]) : t;
}

/** Sleeps, but wakes (rejecting) as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new AbortedError('wait', signal.reason));
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new AbortedError('wait', signal?.reason));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
