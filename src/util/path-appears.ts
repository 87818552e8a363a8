// Waiting for a file (QEMU's QMP socket) to be made, woken by inotify instead of asking again
// every few milliseconds: a new QEMU makes its socket 40-200 ms after its start, on a move's path.
import fs from 'node:fs';
import path from 'node:path';
import { sleep } from './exec.js';

/**
 * Resolves when `file` exists, or after `maxMs` (the caller then looks again: a folder that
 * cannot be watched, or an event lost, costs at most that). Never rejects on its own; an abort
 * of `signal` ends the wait early.
 */
export async function pathAppears(file: string, maxMs: number, signal?: AbortSignal): Promise<void> {
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
    // The folder is not there yet, or cannot be watched: wait the whole time.
  }
  try {
    // Made between the caller's look and the watch: no event would come for it.
    if (watcher && fs.existsSync(file)) return;
    const abort = new AbortController();
    const onAbort = (): void => abort.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await Promise.race([woken, sleep(maxMs, abort.signal).catch(() => undefined)]);
    } finally {
      abort.abort();
      signal?.removeEventListener('abort', onAbort);
    }
  } finally {
    watcher?.close();
  }
}
