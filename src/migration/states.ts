// A migration's states (no zod: the CLI reads them without building the record's schema).
export const MIGRATION_STATES = [
  'queued',
  'preparing',
  'copying-storage',
  'copying-memory',
  /** The guest runs on the destination while the rest of its memory arrives (cannot be cancelled). */
  'post-copy',
  'switching-over',
  'completed',
  'failed',
  'cancelled',
] as const;
export type MigrationState = (typeof MIGRATION_STATES)[number];
/** States a move ends in (phases.ts has the whole state machine). */
export const TERMINAL: readonly MigrationState[] = ['completed', 'failed', 'cancelled'];
