// The move journal: each step of a move is written (durably, by the host's MoveStore) before
// it acts, and again when it is done, with what its undo needs. The runner reads it to undo a
// failed move; recovery reads the same entries after an agent restart and runs the same undo
// steps, so the rules exist once. docs/moves.md documents the format.
import { z } from 'zod';

export const JournalEntry = z.object({
  /** Order within the move (1, 2, …). */
  seq: z.number().int().min(1),
  at: z.string(),
  /** The step's name (unique within its move kind's step list). */
  step: z.string(),
  /** begin: about to act · done: acted (data = what undo needs) · undone: its undo ran · failed: it threw. */
  event: z.enum(['begin', 'done', 'undone', 'failed']),
  data: z.record(z.string(), z.unknown()).optional(),
  message: z.string().optional(),
});
export type JournalEntry = z.infer<typeof JournalEntry>;

/** The steps a journal says were done (done and not undone), oldest first, with their data. */
export function doneSteps(entries: JournalEntry[]): Array<{ step: string; data: Record<string, unknown> }> {
  const out: Array<{ step: string; data: Record<string, unknown> }> = [];
  for (const e of entries) {
    if (e.event === 'done') out.push({ step: e.step, data: e.data ?? {} });
    if (e.event === 'undone') {
      const i = out.map((x) => x.step).lastIndexOf(e.step);
      if (i >= 0) out.splice(i, 1);
    }
  }
  return out;
}

/** Steps that began but never finished nor failed (an agent died while they acted). */
export function interruptedSteps(entries: JournalEntry[]): string[] {
  const open = new Map<string, number>();
  for (const e of entries) {
    if (e.event === 'begin') open.set(e.step, (open.get(e.step) ?? 0) + 1);
    if (e.event === 'done' || e.event === 'failed') {
      const n = (open.get(e.step) ?? 1) - 1;
      if (n > 0) open.set(e.step, n);
      else open.delete(e.step);
    }
  }
  return [...open.keys()];
}
