// Per-host migration slots: at most `limit` moves at once (outgoing and incoming count
// alike); beyond that, requests wait in a queue, FIFO within priority, and can leave it
// (cancel) at any time.
import { AbortedError } from '../errors.js';

import { PRIORITY_RANK as RANK, type Priority } from '../api/defaults.js';

export type { Priority };

interface Waiter {
  id: string;
  priority: Priority;
  seq: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class SlotQueue {
  private active = new Set<string>();
  private waiting: Waiter[] = [];
  private seq = 0;
  constructor(private limitFn: () => number) {}

  get running(): string[] {
    return [...this.active];
  }

  /** Queue order: ids waiting, first to start first. */
  get queued(): string[] {
    return this.sorted().map((w) => w.id);
  }

  position(id: string): number | null {
    const i = this.sorted().findIndex((w) => w.id === id);
    return i < 0 ? null : i + 1;
  }

  /** Takes a slot now if one is free and nobody of equal or higher rank waits. */
  tryAcquire(id: string): boolean {
    if (this.active.has(id)) return true;
    if (this.active.size >= this.limitFn() || this.waiting.length) return false;
    this.active.add(id);
    return true;
  }

  /** Waits for a slot; rejects when `signal` aborts (the request leaves the queue). */
  acquire(id: string, priority: Priority, signal?: AbortSignal): Promise<void> {
    if (this.active.has(id)) return Promise.resolve();
    if (signal?.aborted) return Promise.reject(new AbortedError('wait for a migration slot', signal.reason));
    if (this.active.size < this.limitFn() && !this.waiting.length) {
      this.active.add(id);
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(new AbortedError('wait for a migration slot', signal.reason));
        return;
      }
      const w: Waiter = { id, priority, seq: this.seq++, resolve, reject };
      const onAbort = (): void => {
        const i = this.waiting.indexOf(w);
        if (i >= 0) {
          this.waiting.splice(i, 1);
          reject(new AbortedError('wait for a migration slot', signal?.reason));
        }
      };
      w.resolve = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      this.waiting.push(w);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  release(id: string): void {
    this.active.delete(id);
    this.pump();
  }

  /** Call after the limit changes. */
  pump(): void {
    for (let next = this.sorted()[0]; next && this.active.size < this.limitFn(); next = this.sorted()[0]) {
      this.waiting.splice(this.waiting.indexOf(next), 1);
      this.active.add(next.id);
      next.resolve();
    }
  }

  private sorted(): Waiter[] {
    return [...this.waiting].sort((a, b) => RANK[a.priority] - RANK[b.priority] || a.seq - b.seq);
  }
}
