// qemu-img with its progress: runs `qemu-img ARGS -p`, reports whole percents, kills it when
// the signal aborts or when the percentage stops moving (a cut link makes it wait on TCP).
import { spawn } from 'node:child_process';
import { AbortedError, FerryError } from '../errors.js';

/** Runs qemu-img with -p, reporting its percentage; killed when `signal` aborts. */
export function qemuImgWithProgress(
  args: string[],
  signal: AbortSignal,
  stallMs: number,
  stalled: () => Error,
  onPct: (pct: number) => void,
  fds: readonly number[] = [],
): Promise<void> {
  return new Promise((resolve, reject) => {
    // `fds`: files opened by the caller, /dev/fd/3, 4, ... to qemu-img (qemu/img-files.ts).
    const child = spawn('qemu-img', args, { stdio: ['ignore', 'pipe', 'pipe', ...fds] });
    let err = '';
    // Over a cut link qemu-img waits on TCP for many minutes: kill it when the percentage stops.
    let stalledErr: Error | null = null;
    let lastPct = -1;
    let watch = setTimeout(() => {
      stalledErr = stalled();
      child.kill('SIGKILL');
    }, stallMs);
    child.stdout?.on('data', (b: Buffer) => {
      const m = [...b.toString().matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)].at(-1);
      if (m && Number(m[1]) !== lastPct) {
        lastPct = Number(m[1]);
        clearTimeout(watch);
        watch = setTimeout(() => {
          stalledErr = stalled();
          child.kill('SIGKILL');
        }, stallMs);
      }
      if (m) onPct(Number(m[1]));
    });
    child.stderr?.on('data', (b: Buffer) => {
      err += b.toString();
    });
    const onAbort = (): void => {
      child.kill('SIGKILL');
    };
    signal.addEventListener('abort', onAbort, { once: true });
    child.on('exit', (code) => {
      clearTimeout(watch);
      signal.removeEventListener('abort', onAbort);
      if (stalledErr) reject(stalledErr);
      else if (signal.aborted) reject(new AbortedError('copy the disks', signal.reason));
      else if (code === 0) resolve();
      else
        reject(
          new FerryError(
            'E_COPY_FAILED',
            `Cannot copy a disk: qemu-img failed (${err.trim().split('\n').slice(-2).join(' / ') || `exit ${code}`})`,
          ),
        );
    });
  });
}
