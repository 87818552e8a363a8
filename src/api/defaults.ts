// Defaults and enumerations every component shares: one place to read or change them (the
// CLI's help, the API schemas, the web console, the agent and the cluster all import these).
// No Node imports: the web app bundles this file.

export const PRIORITIES = ['high', 'normal', 'low'] as const;
export type Priority = (typeof PRIORITIES)[number];
/** Lower ranks start first. */
export const PRIORITY_RANK: Record<Priority, number> = { high: 0, normal: 1, low: 2 };

/** move-vm --resumable: how a running VM's disks are copied (docs/moves.md, "Resumable disk copy"). */
export const RESUMABLE_MODES = ['auto', 'always', 'never'] as const;
export type ResumableMode = (typeof RESUMABLE_MODES)[number];

export const DEFAULTS = {
  /** --max-downtime: the longest acceptable pause at switch-over. */
  maxDowntimeMs: 300,
  priority: 'normal' as Priority,
  /** Per host: live moves at once (outgoing and incoming count alike). */
  maxLive: 2,
  /** Per host: storage moves at once. */
  maxStorage: 2,
  /** Cluster queue: moves per node out, per node in, and in the whole cluster. */
  cluster: { maxOutgoing: 2, maxIncoming: 2, maxTotal: 8, adaptive: true },
  /** A copy that moves no data this long is cancelled (FERRY_MIGRATION_STALL_S overrides). */
  stallSeconds: 15,
  /** The agent's port. */
  agentPort: 7443,
} as const;
