// The move journal: each step of a move is written (durably, by the host's MoveStore) before
// it acts, as it records what its undo will need, and when it is done or undone. The runner
// undoes a failed move from it; recovery after an agent restart reads the same entries and runs
// the same undo and resolve code (runner.ts), so the rules exist once. docs/moves.md has the format.
import * as z from 'zod';

export const JournalEntry = z.object({
  /** Order within the move (1, 2, …). */
  seq: z.number().int().min(1),
  at: z.string(),
  /** The step's name (unique within its move kind's step list). */
  step: z.string(),
  /**
   * begin: about to act · data: what its undo needs so far · done: acted (data: all of it) ·
   * undone: its undo ran · failed: it (or its undo) threw.
   */
  event: z.enum(['begin', 'data', 'done', 'undone', 'failed']),
  data: z.record(z.string(), z.unknown()).optional(),
  message: z.string().optional(),
});
export type JournalEntry = z.infer<typeof JournalEntry>;
