// One line about a migration record: phase, %, rates, ETA and verdict (every renderer's words).
import type { RecordProgress } from '../record-progress.js';

const mibs = (bps: number): string => `${(bps / 1024 / 1024).toFixed(1)} MiB/s`;

export function describe(r: RecordProgress): string {
  const parts = [
    `${r.state}${r.state === 'queued' && r.queuePosition ? ` #${r.queuePosition}` : ''}`,
    `${Math.floor(r.progress * 100)}%`,
  ];
  if (r.state === 'copying-memory' || r.state === 'copying-storage') {
    parts.push(
      mibs(r.rate.transferBps),
      `dirty ${mibs(r.rate.dirtyBps)}`,
      `ETA ${r.etaSeconds === null ? '?' : `${Math.ceil(r.etaSeconds)}s`}`,
      r.verdict ?? '',
    );
    if (r.passes > 1) parts.push(`pass ${r.passes}`);
  }
  return parts.filter(Boolean).join('  ');
}

/** The record's log entries after `last` (the newest one already shown); all when it left the log. */
export function newLogEntries(
  r: RecordProgress,
  last: { at: string; message: string } | null,
): RecordProgress['events'] {
  if (!last) return r.events;
  for (let i = r.events.length - 1; i >= 0; i--) {
    const e = r.events[i];
    if (e && e.at === last.at && e.message === last.message) return r.events.slice(i + 1);
  }
  // Older than the log keeps (it holds the last 200): what is there is new.
  return r.events.filter((e) => e.at > last.at);
}

/** HH:MM:SS of an ISO time. */
export const clock = (iso: string): string => iso.slice(11, 19);
