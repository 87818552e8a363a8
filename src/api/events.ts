// Every event an agent publishes (the engine's stream, `/v1/events`), as one typed union. The
// CLI's progress, the web console and the logs all read these; no Node imports (the web app
// bundles this file).
import * as z from 'zod';
import { MigrationRecord } from '../migration/schemas.js';
import { BatchView, MigrationSettings } from './schemas.js';

const vm = z.string();

export const EventBody = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('vm.state'),
    vm,
    state: z.enum(['running', 'paused', 'stopping', 'stopped']),
    pid: z.number().optional(),
    force: z.boolean().optional(),
    /** Why it stopped when Ferry did not stop it ('powered off by its guest'). */
    reason: z.string().optional(),
  }),
  z.object({ type: z.enum(['vm.created', 'vm.removed', 'vm.fenced']), vm }),
  z.object({ type: z.enum(['vm.reattached', 'vm.arrived']), vm, pid: z.number().optional() }),
  z.object({ type: z.literal('vm.left'), vm, reason: z.string().optional() }),
  z.object({ type: z.literal('vm.changed'), vm, ha: z.boolean() }),
  z.object({
    type: z.literal('vm.checkpoint'),
    vm,
    checkpoint: z.string(),
    action: z.enum(['new', 'apply', 'remove']),
    branch: z.string().nullable().optional(),
    pauseMs: z.number().nullable().optional(),
    tookMs: z.number().optional(),
  }),
  z.object({ type: z.literal('vm.ha-started'), vm, generation: z.number(), reason: z.string().optional() }),
  /** The guest restarted, panicked or powered off by itself soon after it arrived here (migration/after-arrival.ts). */
  z.object({
    type: z.literal('vm.guest-trouble'),
    vm,
    what: z.enum(['reset', 'panic', 'shutdown']),
    afterMs: z.number(),
    from: z.string(),
    migration: z.string(),
    message: z.string(),
  }),
  /** Bitmaps of cut disk copies removed from a VM's disks at its start or the agent's (migration/resume-bitmaps.ts). */
  z.object({ type: z.literal('vm.bitmaps'), vm, removed: z.array(z.string()), message: z.string() }),
  z.object({ type: z.literal('host.changed'), migration: MigrationSettings }),
  z.object({ type: z.enum(['switch.created', 'switch.removed']), switch: z.string() }),
  z.object({ type: z.literal('pool.changed'), pool: z.string() }),
  z.object({ type: z.literal('migration'), vm, migration: MigrationRecord }),
  z.object({
    type: z.literal('migration.incoming'),
    vm,
    jobId: z.string(),
    state: z.enum(['prepared', 'running', 'aborted', 'recovered']),
    source: z.string().optional(),
    note: z.string().optional(),
  }),
  z.object({ type: z.literal('cluster.error'), vm: vm.optional(), message: z.string() }),
  z.object({ type: z.literal('cluster.leader'), node: z.string() }),
  z.object({ type: z.literal('cluster.joined'), node: z.string(), cluster: z.string() }),
  z.object({ type: z.literal('cluster.lease-lost'), node: z.string(), reason: z.string() }),
  /** The leader: a node's lease lives but its beat stood still for the window (someone else keeps its lease). */
  z.object({ type: z.literal('cluster.node-stale'), node: z.string(), silentMs: z.number() }),
  /** A value in etcd that does not parse: left out of every decision until it is fixed. */
  z.object({ type: z.literal('cluster.bad-value'), key: z.string(), issue: z.string() }),
  z.object({
    type: z.literal('cluster.ha'),
    vm,
    from: z.string(),
    to: z.string().optional(),
    result: z.string().optional(),
    generation: z.number().optional(),
    priority: z.string().optional(),
    error: z.string().optional(),
  }),
  z.object({ type: z.enum(['cluster.batch-error', 'cluster.scheduler-error']), message: z.string() }),
  /** The leader: why a VM away from its first preferred owner does not fail back yet (said when it changes). */
  z.object({ type: z.literal('cluster.failback-waiting'), vm, home: z.string(), reason: z.string() }),
  /** A drain or fail-back as the leader read it from etcd: at each change, and all when it starts leading. */
  z.object({ type: z.literal('cluster.batch'), batch: BatchView }),
  z.object({
    type: z.literal('cluster.batch-move'),
    node: z.string(),
    vm,
    to: z.string().nullable(),
    migration: z.string().nullable().optional(),
  }),
  z.object({ type: z.literal('cluster.admitted'), migration: z.string(), vm, from: z.string(), to: z.string() }),
  /** Adaptive concurrency changed how many moves may leave (or reach) a node at once. */
  z.object({
    type: z.literal('cluster.concurrency'),
    node: z.string(),
    direction: z.enum(['outgoing', 'incoming']),
    from: z.number(),
    to: z.number(),
    reason: z.string(),
  }),
]);
export type EventBody = z.infer<typeof EventBody>;
export type EventType = EventBody['type'];
/** The union member that carries event type T (some members carry several types). */
type MemberOf<T extends EventType, E = EventBody> = E extends { type: infer K } ? (T extends K ? E : never) : never;
/** The fields of one event type, without its `type`. */
export type EventFields<T extends EventType> = Omit<MemberOf<T>, 'type'>;

/** Publishes one event (EventBus.emit, or a component's narrow view of it). */
export type Emit = <T extends EventType>(type: T, fields: EventFields<T>) => void;

/** An event as published: numbered (the SSE id) and timed. */
export type FerryEvent = EventBody & { seq: number; at: string };
export const FerryEvent = z.intersection(EventBody, z.object({ seq: z.number(), at: z.string() }));

/** An event as a browser reads it from the stream (the web console). */
export type StreamEvent = FerryEvent;
export type MigrationEvent = Extract<FerryEvent, { type: 'migration' }>;

/** The SSE event name the agent sends every event under (a `reset` says history was lost). */
export const SSE_EVENT = 'ferry';

/** One event's `data:` line, or null when it is not an event this client understands (a newer agent's). */
export function parseEvent(data: string): StreamEvent | null {
  let raw: unknown;
  try {
    raw = JSON.parse(data);
  } catch {
    return null;
  }
  const r = FerryEvent.safeParse(raw);
  return r.success ? r.data : null;
}

export const isMigrationEvent = (e: StreamEvent): e is MigrationEvent => e.type === 'migration';
