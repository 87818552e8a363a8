// What the cluster keeps in etcd, one key per thing (relative to /ferry/clusters/<name>/):
//   members/<node>     persistent: the node belongs to the cluster (endpoint)
//   nodes/<node>       on the node's lease: the node is up
//   paused/<node>      persistent: no VM may land on the node (drained or paused by an admin)
//   vms/<vm>           clustered (HA) VM: owner, fencing generation, policy, spec
//   queue/<id>         a cluster move waiting for or holding a slot (on the source's lease)
//   batches/<node>     the last drain or fail-back of a node, item by item
//   config             limits of the queue
//   election/leader    the leader (runs the scheduler, the HA monitor and the drains)
import { DEFAULTS, PRIORITIES, type Priority } from '../api/defaults.js';
import { z } from 'zod';

export { PRIORITIES, PRIORITY_RANK as RANK, type Priority } from '../api/defaults.js';

/** How the cluster treats one clustered VM (Hyper-V: priority, preferred owners, anti-affinity class names). */
export const ClusterPolicy = z
  .object({
    priority: z.enum(PRIORITIES).default('normal'),
    preferredOwners: z
      .array(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/))
      .max(16)
      .default([]),
    antiAffinity: z
      .array(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/))
      .max(8)
      .default([]),
  })
  .strict();
export type ClusterPolicy = z.infer<typeof ClusterPolicy>;
export const DEFAULT_POLICY: ClusterPolicy = { priority: 'normal', preferredOwners: [], antiAffinity: [] };

export const Limits = z
  .object({
    /** Moves leaving one node at once. */
    maxOutgoing: z.number().int().min(1).max(64),
    /** Moves arriving on one node at once. */
    maxIncoming: z.number().int().min(1).max(64),
    /** Moves in the whole cluster at once. */
    maxTotal: z.number().int().min(1).max(1024),
  })
  .strict();
export type Limits = z.infer<typeof Limits>;
export const DEFAULT_LIMITS: Limits = { ...DEFAULTS.cluster };

export interface QueueItem {
  id: string;
  vm: string;
  from: string;
  to: string;
  priority: Priority;
  /** Order within a priority: when it was queued (ms), then id. */
  seq: number;
  state: 'queued' | 'admitted';
  admittedAt?: string;
  /** The drain or fail-back it belongs to, if any. */
  batch?: string;
}

export interface BatchItem {
  vm: string;
  /** The host it leaves (the drained node, or where a fail-back takes it from). */
  from: string;
  priority: Priority;
  to: string | null;
  state: 'pending' | 'moving' | 'moved' | 'failed' | 'blocked' | 'cancelled';
  migrationId: string | null;
  attempts: number;
  reason: string | null;
}

export interface Batch {
  node: string;
  kind: 'drain' | 'failback';
  state: 'running' | 'completed' | 'failed' | 'aborted';
  startedAt: string;
  finishedAt: string | null;
  items: BatchItem[];
}

export interface NodeRecord {
  endpoint: string;
  since: string;
}
export interface PauseRecord {
  reason: 'drain' | 'admin';
  at: string;
}

export const keys = {
  member: (n: string) => `members/${n}`,
  node: (n: string) => `nodes/${n}`,
  paused: (n: string) => `paused/${n}`,
  vm: (n: string) => `vms/${n}`,
  queue: (id: string) => `queue/${id}`,
  batch: (n: string) => `batches/${n}`,
  config: 'config',
} as const;

export function parseLimits(raw: string | null): Limits {
  if (!raw) return DEFAULT_LIMITS;
  const r = Limits.partial().safeParse(JSON.parse(raw));
  return r.success ? { ...DEFAULT_LIMITS, ...r.data } : DEFAULT_LIMITS;
}
