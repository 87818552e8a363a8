// Waiting for a file (QEMU's QMP socket) to be made, woken by inotify instead of asking again
// every few milliseconds: a new QEMU makes its socket 40-200 ms after its start, on a move's path.
import fs from 'node:fs';
import path from 'node:path';
import { sleep } from './exec.js';

/**
 * Resolves when `file` exists, or after `maxMs` (the caller then looks again: an event lost costs
 * at most that), or after `unwatchedMs` when its folder cannot be watched (missing, or no inotify
 * watch left). Never rejects on its own; an abort of `signal` ends the wait.
 */
export async function pathAppears(
  file: string,
  maxMs: number,
  opts: { unwatchedMs?: number; signal?: AbortSignal } = {},
): Promise<void> {
  const { signal } = opts;
  if (signal?.aborted) return;
  const name = path.basename(file);
  let watcher: fs.FSWatcher | null = null;
  let wake: () => void = () => undefined;
  const woken = new Promise<void>((resolve) => (wake = resolve));
  try {
    watcher = fs.watch(path.dirname(file), { persistent: false }, (_event, changed) => {
      if (changed === null || changed === name) wake();
    });
    watcher.on('error', wake);
  } catch {
    // Not watchable: the caller asks again after unwatchedMs.
  }
  try {
    // Made between the caller's look and the watch: no event would come for it.
    if (watcher && fs.existsSync(file)) return;
    const abort = new AbortController();
    const onAbort = (): void => abort.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const ms = watcher ? maxMs : Math.min(maxMs, opts.unwatchedMs ?? maxMs);
      await Promise.race([woken, sleep(ms, abort.signal).catch(() => undefined)]);
    } finally {
      abort.abort();
      signal?.removeEventListener('abort', onAbort);
    }
  } finally {
    watcher?.close();
  }
}
