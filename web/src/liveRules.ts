// Which events make which page load again (the pages' rules for useLive).
import { isMigrationEvent, type StreamEvent } from '../../src/api/events.js';
import { TERMINAL, type MigrationRecord } from '../../src/migration/schemas.js';

type Seen = StreamEvent | 'connection';

/** A migration reached its end (the VM is elsewhere now, or stays). */
export const endsMigration = (e: Seen): boolean =>
  e !== 'connection' && isMigrationEvent(e) && TERMINAL.includes(e.migration.state);

/** The VM list: VM events, incoming VMs, ended migrations, a host gone or back. */
export const changesVms = (e: Seen): boolean =>
  e === 'connection' || e.type.startsWith('vm.') || e.type === 'migration.incoming' || endsMigration(e);

/** Host cards (capacity, pools, switches, settings): anything but a running migration's progress. */
export const changesHosts = (e: Seen): boolean =>
  e === 'connection' || !isMigrationEvent(e) || e.migration.state === 'queued' || endsMigration(e);

/** The cluster page: node states, the queue, HA, drains and fail-backs move with every event. */
export const changesCluster = (e: Seen): boolean =>
  e === 'connection' || !isMigrationEvent(e) || e.migration.state !== 'copying-memory';

/** LIST with REC put in (by id), as an event gives it. */
export function upsertRecord(list: readonly MigrationRecord[] | undefined, rec: MigrationRecord): MigrationRecord[] {
  const out = (list ?? []).filter((r) => r.id !== rec.id);
  out.push(rec);
  return out;
}
