// What the cluster keeps in etcd, one key per thing (relative to /ferry/clusters/<name>/), and
// the zod schema of each value (keys.ts builds the keys and reads every value through these):
//   members/<node>         persistent: the node belongs to the cluster (endpoint)
//   nodes/<node>           on the node's lease: the node is up
//   paused/<node>          persistent: no VM may land on the node (drained or paused by an admin)
//   vms/<vm>               clustered (HA) VM: owner, fencing generation, policy, spec
//   queue/<source>/<id>    a cluster move waiting for or holding a slot (on the source's lease)
//   admit/<id>             the leader's admission of queue entry <id>
//   batches/<node>         the last drain or fail-back of a node, item by item
//   config                 limits of the queue
//   election/leader/<id>   the leader (runs the scheduler, the HA monitor and the drains)
//   leaders/<node>         written by the administrator only: the node may lead (auth.ts)
import { DEFAULTS, PRIORITIES } from '../api/defaults.js';
import { BatchView } from '../api/schemas.js';
import * as z from 'zod';
import { failbackProblem } from './failback.js';

export { PRIORITIES, PRIORITY_RANK as RANK, type Priority } from '../api/defaults.js';

const Name = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/);

/** Automatic fail-back to the first preferred owner: 'immediately', 'never' or 'HH:MM-HH:MM' (failback.ts). */
export const Failback = z.string().superRefine((s, c) => {
  const bad = failbackProblem(s);
  if (bad) c.addIssue({ code: 'custom', message: bad });
});

/**
 * How the cluster treats one clustered VM (Hyper-V: priority, preferred owners, anti-affinity
 * class names, fail-back).
 */
export const ClusterPolicy = z
  .object({
    priority: z.enum(PRIORITIES).default('normal'),
    preferredOwners: z.array(Name).max(16).default([]),
    antiAffinity: z.array(Name).max(8).default([]),
    failback: Failback.default('never'),
  })
  .strict();
export type ClusterPolicy = z.infer<typeof ClusterPolicy>;
export const DEFAULT_POLICY: ClusterPolicy = {
  priority: 'normal',
  preferredOwners: [],
  antiAffinity: [],
  failback: 'never',
};

export const Limits = z
  .object({
    /** Moves leaving one node at once. */
    maxOutgoing: z.number().int().min(1).max(64),
    /** Moves arriving on one node at once. */
    maxIncoming: z.number().int().min(1).max(64),
    /** Moves in the whole cluster at once. */
    maxTotal: z.number().int().min(1).max(1024),
    /** Drains and fail-backs learn how many moves to run at once, up to the limits (adaptive.ts). */
    adaptive: z.boolean(),
  })
  .strict();
export type Limits = z.infer<typeof Limits>;
export const DEFAULT_LIMITS: Limits = { ...DEFAULTS.cluster };
/** The `config` key: limits set so far (the rest are the defaults). */
export const ConfigRecord = Limits.partial();

const Endpoint = z.string().regex(/^https?:\/\/\S+$/);
const Iso = z.string().min(1);

/**
 * members/<node>: a member of the cluster. `beat` changes every beat period while the node's agent
 * (or its fence) lives: the leader's proof of life that another host cannot forge (beats.ts).
 * `beatWindowMs`: how long after its last beat the writer has fenced itself, less its margin
 * (absent: the first version's 6 s).
 */
export const MemberRecord = z.object({
  endpoint: Endpoint,
  joinedAt: Iso.optional(),
  beat: z.number().int().nonnegative().optional(),
  beatWindowMs: z.number().int().positive().optional(),
});
export type MemberRecord = z.infer<typeof MemberRecord>;

/** nodes/<node>: the node is up (on its lease). */
export const NodeRecord = z.object({ endpoint: Endpoint, since: Iso });
export type NodeRecord = z.infer<typeof NodeRecord>;

/** paused/<node>: the node takes no VMs. */
export const PauseRecord = z.object({ reason: z.enum(['drain', 'admin']), at: Iso });
export type PauseRecord = z.infer<typeof PauseRecord>;

/**
 * The VM spec as an HA record carries it: the node that restarts the VM checks the whole
 * spec (parseVmSpec); the leader needs only its name and cluster policy.
 */
export const HaSpec = z.object({ name: Name, cluster: ClusterPolicy.optional() }).loose();
export type HaSpec = z.infer<typeof HaSpec>;

/** vms/<vm>: a clustered (HA) VM, its owner and fencing generation. */
export const HaRecord = z.object({
  name: Name,
  id: z.string().min(1),
  configPath: z.string().startsWith('/'),
  owner: Name,
  memoryMiB: z.number().int().min(0),
  generation: z.number().int().min(0),
  spec: HaSpec,
  /**
   * The first preferred owner this VM had to leave (it died, or was paused or drained) and
   * goes back to by automatic fail-back. Kept here, not in the leader's memory, so a fail-back
   * survives a change of leader while its home is away.
   */
  away: Name.optional(),
  /**
   * Set by a leader's HA restart (the node the VM was restarted from) until the owner boots it:
   * its own write of the record then drops it. While it is set and the owner is up, every
   * leader's pass asks the owner again (it may not have answered), a new leader too.
   */
  restartFrom: Name.optional(),
});
export type HaRecord = z.infer<typeof HaRecord>;

/** queue/<source>/<id>: a move between two nodes, queued by its source. */
export const QueueEntry = z.object({
  id: z.string().min(1),
  vm: Name,
  from: Name,
  to: Name,
  priority: z.enum(PRIORITIES),
  /** Order within a priority: when it was queued (ms), then id. */
  seq: z.number(),
  /** The drain or fail-back it belongs to, if any. */
  batch: z.string().optional(),
});
export type QueueEntry = z.infer<typeof QueueEntry>;
/** A queue entry with its state (admitted when admit/<id> exists). */
export type QueueItem = QueueEntry & { state: 'queued' | 'admitted' };

/** leaders/<node>: the administrator lets the node lead (and so hold HA VMs). */
export const LeaderGrant = z.object({ at: Iso });
export type LeaderGrant = z.infer<typeof LeaderGrant>;

/** admit/<id>: the leader admitted the move. */
export const AdmitRecord = z.object({ at: Iso });
export type AdmitRecord = z.infer<typeof AdmitRecord>;

/** batches/<node>: the last drain or fail-back of a node, item by item (the API shows it as is). */
export const Batch = BatchView;
export type Batch = BatchView;
export type BatchItem = Batch['items'][number];

/** What the leader reads about the nodes: members, those up (with a lease), paused, leader-eligible. */
export interface ClusterNodes {
  members: Record<string, MemberRecord>;
  up: Record<string, NodeRecord>;
  paused: Set<string>;
  /** Nodes the administrator lets lead (leaders/<node>). */
  leaders: Set<string>;
}

/**
 * May `node` lead, and so hold HA VMs (their records are cluster decisions)? A cluster set up
 * before access control has no leaders/ keys: there every member may.
 */
export function mayLead(nodes: Pick<ClusterNodes, 'leaders'>, node: string): boolean {
  return nodes.leaders.size === 0 || nodes.leaders.has(node);
}

/** A clustered VM's policy: what its spec says, defaults for the rest. */
export function policyOf(spec: HaSpec | undefined): ClusterPolicy {
  return { ...DEFAULT_POLICY, ...(spec?.cluster ?? {}) };
}
