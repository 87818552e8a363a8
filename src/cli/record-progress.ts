// What following a move reads of each `migration` event's record: the fields the renderers,
// Ctrl-C and "is this newer" use. Each event is checked against this small schema; the whole
// record's schema is checked once, on the record the move ended with (follow.ts). Checking
// every event against the whole record schema cost the CLI ~36 ms of CPU per move (issue 17).
import { z } from 'zod';
import { MIGRATION_STATES } from '../migration/states.js';

export const RecordProgress = z.looseObject({
  id: z.string(),
  vm: z.string(),
  kind: z.enum(['live', 'shared-nothing', 'storage', 'offline']),
  source: z.string(),
  destination: z.string(),
  state: z.enum(MIGRATION_STATES),
  queuePosition: z.number().nullable(),
  progress: z.number(),
  etaSeconds: z.number().nullable(),
  verdict: z.enum(['converging', 'stalled', 'not-converging']).nullable(),
  downtimeMs: z.number().nullable(),
  bytesTransferred: z.number(),
  passes: z.number(),
  rate: z.object({ transferBps: z.number(), dirtyBps: z.number() }),
  remainingBytes: z.number().nullable(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
  events: z.array(z.object({ at: z.string(), message: z.string() })),
});
export type RecordProgress = z.infer<typeof RecordProgress>;
