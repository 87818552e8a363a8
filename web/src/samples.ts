// Samples of each migration's remaining memory and rates, taken whenever a record is
// fetched or arrives in an event; kept per migration id for the page's lifetime so the
// chart survives navigation.
import type { MigrationRecord } from '../../src/migration/schemas.js';

export interface Sample {
  t: number;
  remainingBytes: number | null;
  transferBps: number;
  dirtyBps: number;
}

const store = new Map<string, Sample[]>();
const MAX = 1200;
const SAMPLED = new Set(['preparing', 'copying-storage', 'copying-memory', 'switching-over']);

export function addSample(r: MigrationRecord, now = Date.now()): void {
  if (!SAMPLED.has(r.state)) return;
  const list = store.get(r.id) ?? [];
  const last = list[list.length - 1];
  if (last && now - last.t < 200) return;
  list.push({ t: now, remainingBytes: r.remainingBytes, transferBps: r.rate.transferBps, dirtyBps: r.rate.dirtyBps });
  if (list.length > MAX) list.splice(0, list.length - MAX);
  store.set(r.id, list);
}

export function samplesFor(id: string): readonly Sample[] {
  return store.get(id) ?? [];
}
