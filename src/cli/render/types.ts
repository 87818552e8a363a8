// What every progress renderer takes: records as they change, and notes from the CLI itself
// (Ctrl-C, reconnects). Events in, renderers out.
import type { RecordProgress } from '../record-progress.js';

export interface MoveRenderer {
  /** A newer state of the migration being followed. */
  record(r: RecordProgress): void;
  /** Something the CLI says (what Ctrl-C did, a lost connection). */
  note(text: string): void;
  /** The end: leave the terminal as it was. */
  stop(): void;
}

export const PROGRESS_MODES = ['auto', 'bar', 'lines', 'json', 'none'] as const;
export type ProgressMode = (typeof PROGRESS_MODES)[number];
