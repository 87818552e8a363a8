// What following a move reads of each `migration` event's record: the fields the renderers,
// Ctrl-C and "is this newer" use. Each event is checked against this small schema, never
// against the whole record's (follow.ts): checking every event against it cost the CLI ~36 ms
// of CPU per move, building it and checking once at the end another ~70 ms (issue 17).
import * as z from 'zod';
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
  pausedBytes: z.number().nullable().optional(),
  bytesTransferred: z.number(),
  passes: z.number(),
  rate: z.object({ transferBps: z.number(), dirtyBps: z.number() }),
  remainingBytes: z.number().nullable(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
  events: z.array(z.object({ at: z.string(), message: z.string() })),
});
export type RecordProgress = z.infer<typeof RecordProgress>;
