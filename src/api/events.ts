// The agent's event stream (GET /v1/events, text/event-stream) as clients read it: every
// event has a sequence number (the SSE id, for Last-Event-ID), a time and a type; a
// `migration` event carries the migration's whole record, the others name what changed so a
// client knows what to load again.
import { z } from 'zod';
import { MigrationRecord } from '../migration/schemas.js';

const Base = z.object({ seq: z.number().int().min(0), at: z.string(), vm: z.string().optional() });

export const MigrationEvent = Base.extend({ type: z.literal('migration'), migration: MigrationRecord });
export type MigrationEvent = z.infer<typeof MigrationEvent>;

/** Any other event: `vm.*`, `host.changed`, `pool.changed`, `switch.*`, `cluster.*`, `migration.incoming`. */
export const OtherEvent = Base.extend({ type: z.string().regex(/^[a-z][a-z.-]{0,63}$/) });
export type OtherEvent = z.infer<typeof OtherEvent>;

export type StreamEvent = MigrationEvent | OtherEvent;

/** The SSE event name the agent sends every event under. */
export const SSE_EVENT = 'ferry';

/** One event's `data:` line, or null when it is not an event this client understands. */
export function parseEvent(data: string): StreamEvent | null {
  let raw: unknown;
  try {
    raw = JSON.parse(data);
  } catch {
    return null;
  }
  const type = (raw as { type?: unknown } | null)?.type;
  const r = type === 'migration' ? MigrationEvent.safeParse(raw) : OtherEvent.safeParse(raw);
  return r.success ? r.data : null;
}

export const isMigrationEvent = (e: StreamEvent): e is MigrationEvent => e.type === 'migration';
