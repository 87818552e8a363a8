// The agent's Prometheus metrics, derived from its typed event stream (events in, metrics
// out): the move code does not call the metrics, the metrics read what the engine publishes.
// Gauges of what exists now (VMs, slots, queue) are read at scrape time. Names follow
// Prometheus' conventions: base units (seconds, bytes) and `_total` only on counters.
import client from 'prom-client';
import type { FerryEvent } from '../api/events.js';
import type { EventBus } from '../events/bus.js';
import type { MigrationRecord } from '../migration/schemas.js';
import { TERMINAL } from '../migration/schemas.js';

/** How often the event-loop lag metric samples (prom-client's default is 10 ms). */
export const EVENT_LOOP_SAMPLE_MS = 100;

/** What the scrape-time gauges read. */
export interface MetricSources {
  events: EventBus;
  vms: { list(): Promise<Array<{ state: string }>> };
  migrations: {
    slots: { running: string[]; queued: string[] };
    storageSlots: { running: string[]; queued: string[] };
  };
}

/** Moves last from seconds (storage, small VMs) to an hour (big disks over a slow network). */
const DURATION_BUCKETS = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600];
/** Switch-over pauses: milliseconds when it goes well, seconds when a policy gave up on converging. */
const DOWNTIME_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Ended moves remembered so a repeated terminal event is not counted twice. */
const KEEP_ENDED = 1000;

export class AgentMetrics {
  readonly registry = new client.Registry();
  private readonly events: client.Counter<'type'>;
  private readonly migrations: client.Counter<'kind' | 'result'>;
  private readonly duration: client.Histogram<'kind'>;
  private readonly downtime: client.Histogram<'kind'>;
  private readonly bytes: client.Counter<'kind'>;
  private readonly haRestarts: client.Counter;
  private readonly fencing: client.Counter;
  private readonly fencedVms: client.Counter;
  private readonly leaderChanges: client.Counter;
  /** Bytes already counted per running move (progress events carry the running total). */
  private readonly bytesSeen = new Map<string, number>();
  private readonly ended = new Set<string>();
  private readonly unsubscribe: () => void;

  constructor(parts: MetricSources, opts: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    // The event-loop lag is sampled by a timer: prom-client's default (every 10 ms) was almost all
    // of an idle agent's CPU (~4.7 of ~5-6 ms/s); every 100 ms costs ~0.6 ms/s and still sees
    // every stall of 100 ms or more (docs/performance.md, "An idle agent's timer").
    if (opts.defaultMetrics ?? true)
      client.collectDefaultMetrics({
        register: this.registry,
        prefix: 'ferry_agent_',
        eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS,
      });
    new client.Gauge({ name: 'ferry_agent_up', help: 'The agent serves (always 1 when scraped)', registers }).set(1);
    new client.Gauge({
      name: 'ferry_vms',
      help: 'VMs registered on this host, by state',
      labelNames: ['state'],
      registers,
      async collect() {
        const counts: Record<string, number> = { running: 0, paused: 0, stopped: 0, migrating: 0 };
        for (const v of await parts.vms.list()) counts[v.state] = (counts[v.state] ?? 0) + 1;
        for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
      },
    });
    const { slots, storageSlots } = parts.migrations;
    new client.Gauge({
      name: 'ferry_migration_slots_in_use',
      help: 'Migration slots taken on this host (live: outgoing and incoming moves; storage: storage moves)',
      labelNames: ['class'],
      registers,
      collect() {
        this.set({ class: 'live' }, slots.running.length);
        this.set({ class: 'storage' }, storageSlots.running.length);
      },
    });
    new client.Gauge({
      name: 'ferry_migration_queue_length',
      help: 'Moves waiting for a slot on this host',
      labelNames: ['class'],
      registers,
      collect() {
        this.set({ class: 'live' }, slots.queued.length);
        this.set({ class: 'storage' }, storageSlots.queued.length);
      },
    });
    this.events = new client.Counter({
      name: 'ferry_events_total',
      help: 'Events the engine has published, by type',
      labelNames: ['type'],
      registers,
    });
    this.migrations = new client.Counter({
      name: 'ferry_migrations_total',
      help: 'Moves this host was the source of that ended, by kind and result (completed, failed, cancelled)',
      labelNames: ['kind', 'result'],
      registers,
    });
    this.duration = new client.Histogram({
      name: 'ferry_migration_duration_seconds',
      help: 'Time from the start of a completed move to its end',
      labelNames: ['kind'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.downtime = new client.Histogram({
      name: 'ferry_migration_downtime_seconds',
      help: "Time a completed move paused the guest at switch-over (QEMU's measured downtime)",
      labelNames: ['kind'],
      buckets: DOWNTIME_BUCKETS,
      registers,
    });
    this.bytes = new client.Counter({
      name: 'ferry_migration_bytes_total',
      help: 'Bytes moves from this host sent (memory and disk copies), counted as they progress',
      labelNames: ['kind'],
      registers,
    });
    this.haRestarts = new client.Counter({
      name: 'ferry_ha_restarts_total',
      help: 'HA VMs this host started after their node failed or after its own self-fence',
      registers,
    });
    this.fencing = new client.Counter({
      name: 'ferry_fencing_events_total',
      help: 'Times this host lost its cluster lease and fenced itself (stopped its HA VMs)',
      registers,
    });
    this.fencedVms = new client.Counter({
      name: 'ferry_fenced_vms_total',
      help: 'HA VMs this host stopped while fencing itself',
      registers,
    });
    this.leaderChanges = new client.Counter({
      name: 'ferry_leader_changes_total',
      help: 'Times this host became the cluster leader',
      registers,
    });
    // Events published before the metrics existed (recovery at start) are still in the ring.
    for (const e of parts.events.since(0) ?? []) this.observe(e);
    this.unsubscribe = parts.events.subscribe((e) => {
      this.observe(e);
    });
  }

  /** One event in, the metrics it moves out. */
  observe(e: FerryEvent): void {
    this.events.inc({ type: e.type });
    switch (e.type) {
      case 'migration':
        this.migration(e.migration);
        break;
      case 'vm.ha-started':
        this.haRestarts.inc();
        break;
      case 'cluster.lease-lost':
        this.fencing.inc();
        break;
      case 'vm.fenced':
        this.fencedVms.inc();
        break;
      case 'cluster.leader':
        this.leaderChanges.inc();
        break;
      default:
        break;
    }
  }

  private migration(r: MigrationRecord): void {
    if (this.ended.has(r.id)) return;
    const kind = r.kind;
    const seen = this.bytesSeen.get(r.id) ?? 0;
    // A move's running total only grows; a smaller one (a retried step) adds nothing.
    if (r.bytesTransferred > seen) {
      this.bytes.inc({ kind }, r.bytesTransferred - seen);
      this.bytesSeen.set(r.id, r.bytesTransferred);
    }
    if (!TERMINAL.includes(r.state)) return;
    this.bytesSeen.delete(r.id);
    this.ended.add(r.id);
    if (this.ended.size > KEEP_ENDED) {
      const [oldest] = this.ended;
      if (oldest !== undefined) this.ended.delete(oldest);
    }
    this.migrations.inc({ kind, result: r.state });
    if (r.state !== 'completed') return;
    if (r.totalMs !== null) this.duration.observe({ kind }, r.totalMs / 1000);
    if (r.downtimeMs !== null) this.downtime.observe({ kind }, r.downtimeMs / 1000);
  }

  close(): void {
    this.unsubscribe();
  }
}
