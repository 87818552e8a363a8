// The QMP commands Ferry uses, typed (QEMU 7.2 shapes; see shared/QEMU-NOTES.md).
// Only what we call is listed; `QmpClient.executeRaw` is the escape hatch.

export type RunState =
  | 'running'
  | 'paused'
  | 'prelaunch'
  | 'inmigrate'
  | 'postmigrate'
  | 'finish-migrate'
  | 'shutdown'
  | 'suspended'
  | 'internal-error'
  | 'io-error'
  | 'restore-vm'
  | 'save-vm'
  | 'debug'
  | 'guest-panicked'
  | 'watchdog'
  | 'colo';

export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'postcopy-recover'
  | 'completed'
  | 'failed'
  | 'colo'
  | 'pre-switchover'
  | 'device'
  | 'wait-unplug';

export interface MigrationRamStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  skipped: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  mbps: number;
  'dirty-sync-count': number;
  'postcopy-requests': number;
  'page-size': number;
  'multifd-bytes': number;
  'pages-per-second': number;
  'precopy-bytes'?: number;
  'downtime-bytes'?: number;
  'postcopy-bytes'?: number;
}

export type YankInstance =
  { type: 'migration' } | { type: 'chardev'; id: string } | { type: 'block-node'; 'node-name': string };

export interface MigrationInfo {
  status?: MigrationStatus;
  'setup-time'?: number;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  ram?: MigrationRamStats;
  'socket-address'?: Array<{ type: string; host?: string; port?: string; path?: string }>;
}

export type MigrationCapability =
  | 'xbzrle'
  | 'rdma-pin-all'
  | 'auto-converge'
  | 'zero-blocks'
  | 'compress'
  | 'events'
  | 'postcopy-ram'
  | 'x-colo'
  | 'release-ram'
  | 'block'
  | 'return-path'
  | 'pause-before-switchover'
  | 'multifd'
  | 'dirty-bitmaps'
  | 'postcopy-blocktime'
  | 'late-block-activate'
  | 'x-ignore-shared'
  | 'validate-uuid'
  | 'background-snapshot'
  | 'zero-copy-send'
  | 'postcopy-preempt';

export interface MigrationParameters {
  'max-bandwidth'?: number;
  'downtime-limit'?: number;
  'multifd-channels'?: number;
  'xbzrle-cache-size'?: number;
  'cpu-throttle-initial'?: number;
  'cpu-throttle-increment'?: number;
  'max-cpu-throttle'?: number;
  'throttle-trigger-threshold'?: number;
  'max-postcopy-bandwidth'?: number;
  'tls-creds'?: string;
  'tls-hostname'?: string;
  'tls-authz'?: string;
  'multifd-compression'?: 'none' | 'zlib' | 'zstd';
}

export interface JobInfo {
  id: string;
  type: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

export interface BlockInfo {
  device: string;
  qdev?: string;
  locked: boolean;
  removable: boolean;
  inserted?: {
    file: string;
    'node-name'?: string;
    drv: string;
    ro: boolean;
    image: { filename: string; format: string; 'virtual-size': number };
    /** How many backing images lie under the root node (0: none). */
    backing_file_depth?: number;
    /** QEMU 7.2: the root node's dirty bitmaps (count = dirty bytes). */
    'dirty-bitmaps'?: DirtyBitmapInfo[];
  };
}

export interface DirtyBitmapInfo {
  name?: string;
  count: number;
  granularity: number;
  recording: boolean;
  busy: boolean;
  persistent: boolean;
  /** A persistent bitmap QEMU could not save (or load) completely: unusable. */
  inconsistent?: boolean;
}

type NoArgs = Record<string, never> | undefined;

/** command name → { args, ret } */
export interface QmpCommands {
  qmp_capabilities: { args: NoArgs; ret: Record<string, never> };
  'query-status': { args: NoArgs; ret: { running: boolean; singlestep?: boolean; status: RunState } };
  'query-version': { args: NoArgs; ret: { qemu: { major: number; minor: number; micro: number }; package: string } };
  'query-name': { args: NoArgs; ret: { name?: string } };
  'query-kvm': { args: NoArgs; ret: { enabled: boolean; present: boolean } };
  stop: { args: NoArgs; ret: Record<string, never> };
  cont: { args: NoArgs; ret: Record<string, never> };
  system_powerdown: { args: NoArgs; ret: Record<string, never> };
  system_reset: { args: NoArgs; ret: Record<string, never> };
  quit: { args: NoArgs; ret: Record<string, never> };
  'query-memory-size-summary': { args: NoArgs; ret: { 'base-memory': number; 'plugged-memory'?: number } };
  pmemsave: { args: { val: number; size: number; filename: string; 'cpu-index'?: number }; ret: Record<string, never> };
  'query-migrate': { args: NoArgs; ret: MigrationInfo };
  'query-migrate-parameters': { args: NoArgs; ret: MigrationParameters };
  'migrate-set-capabilities': {
    args: { capabilities: Array<{ capability: MigrationCapability; state: boolean }> };
    ret: Record<string, never>;
  };
  'migrate-set-parameters': { args: MigrationParameters; ret: Record<string, never> };
  migrate: { args: { uri: string; resume?: boolean; detach?: boolean }; ret: Record<string, never> };
  'migrate-incoming': { args: { uri: string }; ret: Record<string, never> };
  migrate_cancel: { args: NoArgs; ret: Record<string, never> };
  /** Shuts down an instance's connections at once (QEMU 6.0+): a stream blocked on a dead link. */
  yank: {
    args: { instances: YankInstance[] };
    ret: Record<string, never>;
  };
  /** The instances whose connections can be shut down: a migration's, until its clean-up is done. */
  'query-yank': { args: NoArgs; ret: YankInstance[] };
  'migrate-continue': { args: { state: MigrationStatus }; ret: Record<string, never> };
  'migrate-start-postcopy': { args: NoArgs; ret: Record<string, never> };
  'migrate-pause': { args: NoArgs; ret: Record<string, never> };
  'migrate-recover': { args: { uri: string }; ret: Record<string, never> };
  'query-block': { args: NoArgs; ret: BlockInfo[] };
  'query-named-block-nodes': {
    args: { flat?: boolean } | undefined;
    ret: Array<{
      'node-name': string;
      file: string;
      drv: string;
      ro: boolean;
      'dirty-bitmaps'?: DirtyBitmapInfo[];
      image: { filename: string; format: string; 'virtual-size': number };
      cache: { direct: boolean; 'no-flush': boolean; writeback: boolean };
    }>;
  };
  'query-jobs': { args: NoArgs; ret: JobInfo[] };
  'blockdev-add': {
    args: Record<string, unknown> & { 'node-name': string; driver: string };
    ret: Record<string, never>;
  };
  'blockdev-del': { args: { 'node-name': string }; ret: Record<string, never> };
  'blockdev-create': { args: { 'job-id': string; options: Record<string, unknown> }; ret: Record<string, never> };
  'blockdev-mirror': {
    args: {
      'job-id': string;
      device: string;
      target: string;
      sync: 'full' | 'top' | 'none';
      speed?: number;
      'auto-finalize'?: boolean;
      'auto-dismiss'?: boolean;
      'copy-mode'?: 'background' | 'write-blocking';
      granularity?: number;
      'buf-size'?: number;
    };
    ret: Record<string, never>;
  };
  transaction: {
    args: {
      actions: Array<
        | {
            type: 'blockdev-snapshot-sync';
            data: {
              'node-name': string;
              'snapshot-file': string;
              'snapshot-node-name'?: string;
              format?: string;
              mode?: 'existing' | 'absolute-paths';
            };
          }
        | { type: 'blockdev-snapshot'; data: { node: string; overlay: string } }
      >;
    };
    ret: Record<string, never>;
  };
  'block-stream': {
    args: {
      'job-id': string;
      device: string;
      'base-node'?: string;
      'backing-file'?: string;
      'auto-finalize'?: boolean;
      'auto-dismiss'?: boolean;
    };
    ret: Record<string, never>;
  };
  'block-commit': {
    args: {
      'job-id': string;
      device: string;
      'top-node'?: string;
      'base-node'?: string;
      'backing-file'?: string;
      'auto-finalize'?: boolean;
      'auto-dismiss'?: boolean;
    };
    ret: Record<string, never>;
  };
  'blockdev-backup': {
    args: {
      'job-id': string;
      device: string;
      target: string;
      sync: 'full' | 'bitmap' | 'incremental' | 'top' | 'none';
      bitmap?: string;
      'bitmap-mode'?: 'on-success' | 'never' | 'always';
      speed?: number;
      'auto-finalize'?: boolean;
      'auto-dismiss'?: boolean;
    };
    ret: Record<string, never>;
  };
  'block-dirty-bitmap-add': {
    args: { node: string; name: string; persistent?: boolean; granularity?: number; disabled?: boolean };
    ret: Record<string, never>;
  };
  'block-dirty-bitmap-remove': { args: { node: string; name: string }; ret: Record<string, never> };
  'block-dirty-bitmap-clear': { args: { node: string; name: string }; ret: Record<string, never> };
  'block-job-cancel': { args: { device: string; force?: boolean }; ret: Record<string, never> };
  'block-job-complete': { args: { device: string }; ret: Record<string, never> };
  'block-job-set-speed': { args: { device: string; speed: number }; ret: Record<string, never> };
  'job-dismiss': { args: { id: string }; ret: Record<string, never> };
  'job-cancel': { args: { id: string }; ret: Record<string, never> };
  'nbd-server-start': {
    args: { addr: Record<string, unknown>; 'tls-creds'?: string; 'tls-authz'?: string };
    ret: Record<string, never>;
  };
  'nbd-server-stop': { args: NoArgs; ret: Record<string, never> };
  'block-export-add': {
    args: {
      type: 'nbd';
      id: string;
      'node-name': string;
      name?: string;
      writable?: boolean;
      /** Flush after every write before acknowledging it (a killed QEMU then loses no acknowledged write). */
      writethrough?: boolean;
    };
    ret: Record<string, never>;
  };
  'block-export-del': { args: { id: string; mode?: 'safe' | 'hard' }; ret: Record<string, never> };
  'object-add': { args: Record<string, unknown> & { 'qom-type': string; id: string }; ret: Record<string, never> };
  'object-del': { args: { id: string }; ret: Record<string, never> };
  /** Keys pressed together, as a keyboard would (tests: a guest's own sysrq). */
  'send-key': {
    args: { keys: Array<{ type: 'qcode'; data: string }>; 'hold-time'?: number };
    ret: Record<string, never>;
  };
  screendump: {
    args: { filename: string; device?: string; head?: number; format?: 'ppm' | 'png' };
    ret: Record<string, never>;
  };
  'human-monitor-command': { args: { 'command-line': string }; ret: string };
  'calc-dirty-rate': {
    args: { 'calc-time': number; 'sample-pages'?: number; mode?: DirtyRateMode };
    ret: Record<string, never>;
  };
  'query-dirty-rate': { args: NoArgs; ret: DirtyRateInfo };
}

/** QEMU 7.2's ways of measuring a guest's dirty rate (dirty-ring needs KVM's dirty ring). */
export type DirtyRateMode = 'page-sampling' | 'dirty-bitmap' | 'dirty-ring';
export interface DirtyRateInfo {
  status: 'unstarted' | 'measuring' | 'measured';
  /** MiB/s (QEMU says MB/s and computes it in MiB); absent until measured. */
  'dirty-rate'?: number;
  'start-time': number;
  /** seconds */
  'calc-time': number;
  'sample-pages': number;
  mode: DirtyRateMode;
}

export type QmpCommandName = keyof QmpCommands;
export type QmpArgs<K extends QmpCommandName> = QmpCommands[K]['args'];
export type QmpReturn<K extends QmpCommandName> = QmpCommands[K]['ret'];

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
  /** Position in this connection's event history (0-based), for "since" searches. */
  index: number;
}
