import { execFile, spawn } from 'node:child_process';
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
        reject(failure(cmd, args, opts, { killed: e.killed === true, code: e.code, stdout, stderr, err }));
      },
    );
    child.stdin?.end(opts.input);
  });
}

/** Why a command failed, as run's callers see it: aborted, timed out, not installed, or its own message. */
function failure(
  cmd: string,
  args: readonly string[],
  opts: RunOptions,
  f: { killed: boolean; code: unknown; stdout: string; stderr: string; err?: Error },
): FerryError {
  const what = `run ${cmd}`;
  if (opts.signal?.aborted) return new AbortedError(what, opts.signal.reason);
  if (f.killed) return new TimeoutError(what, opts.timeoutMs ?? 60_000, { cmd, args });
  if (f.code === 'ENOENT')
    return new CommandFailedError(cmd, args, `${cmd} is not installed; run scripts/setup`, f.err);
  const detail = (f.stderr || f.stdout || f.err?.message || `exit ${String(f.code)}`)
    .trim()
    .split('\n')
    .slice(-5)
    .join(' / ');
  return new CommandFailedError(cmd, args, detail, f.err, { exitCode: f.code, stderr: f.stderr });
}

/**
 * Runs a program with `fd` as its descriptor 3 (`/dev/fd/3` to it; several: 3, 4, ...): a file
 * opened here without links reaches the program as that very file, whatever its path becomes meanwhile.
 */
export function runWithFd(
  cmd: string,
  args: readonly string[],
  fd: number | readonly number[],
  opts: RunOptions = {},
): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const what = `run ${cmd}`;
  if (opts.signal?.aborted) return Promise.reject(new AbortedError(what, opts.signal.reason));
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env,
      stdio: ['ignore', 'pipe', 'pipe', ...(typeof fd === 'number' ? [fd] : fd)],
      signal: opts.signal,
      timeout: timeoutMs,
      killSignal: 'SIGKILL',
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (err: NodeJS.ErrnoException) => {
      reject(failure(cmd, args, opts, { killed: false, code: err.code, stdout, stderr, err }));
    });
    child.on('close', (code, sig) => {
      if (code === 0) resolve({ stdout, stderr });
      else reject(failure(cmd, args, opts, { killed: sig === 'SIGKILL', code: code ?? sig, stdout, stderr }));
    });
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
