// What a move needs from the host it runs on, and nothing more. The agent implements this;
// migration code never imports src/agent/. Keeping it narrow is what lets the move runner be
// unit-tested with a fake host and lets each concern of the agent change on its own.
import type { Emit } from '../api/events.js';
import type { HostView, MigrationSettings } from '../api/schemas.js';
import type { Accelerator } from '../qemu/accel.js';
import type { CpuModelInfo } from '../qemu/cpu-models.js';
import type { QemuProcess } from '../qemu/process.js';
import type { DiskChains, SwitchBackend } from '../qemu/argv.js';
import type { PoolDef } from '../storage/pools.js';
import type { VmSpec } from '../vm/spec.js';
import type { Priority } from '../api/defaults.js';
import type { MigrationRecord } from './schemas.js';
import type { JournalEntry } from './journal.js';

export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
  /** The domain's revocation list, when the admin pushed one (QEMU's TLS refuses revoked peers). */
  crl?: string;
}

/** A port reserved for one listener until QEMU listens on it (or gives up). */
export interface PortLease {
  readonly port: number;
  release(): void;
}

/** A VM this host owns: its name, id and folder. */
export interface VmRef {
  name: string;
  id: string;
  configPath: string;
}

/** The VM inventory, seen from a move. */
export interface MoveVms {
  /** The VM's record; throws E_VM_NOT_FOUND. */
  record(name: string): VmRef;
  /** Its vm.json. */
  spec(name: string): Promise<VmSpec>;
  /** Its QEMU when it runs, else null. */
  proc(name: string): QemuProcess | null;
  /** Names and ids registered here. */
  ids(): Array<{ name: string; id: string }>;
  /** Takes the VM's phase gate for a move: every other operation on it is refused until `release`. Throws E_VM_BUSY. */
  hold(name: string, jobId: string): void;
  release(name: string, jobId: string): void;
  /** The VM now runs elsewhere: quit our QEMU (if any) and forget it. */
  movedAway(name: string, proc: QemuProcess | null): Promise<void>;
  /**
   * A VM arrived by live migration and runs here now; `arrival` says from where, and the QMP
   * event mark taken before it ran (its guest is watched for a while from there).
   */
  arrivedRunning(
    spec: VmSpec,
    proc: QemuProcess,
    pagingFile?: string | null,
    arrival?: { from: string; migration: string; since: number },
  ): void;
  /** Smart Paging: null for ordinary memory, else the paging file made for it; E_VM_MEMORY when neither. */
  memoryFor(spec: VmSpec, action: 'start' | 'move'): Promise<string | null>;
  /** A stopped VM whose files this host sees moves here: check (unless told not to) and register it. */
  arrivedStopped(spec: unknown, opts?: { skipStorageCheck?: boolean }): Promise<void>;
  /** Every file of the VM is inside a pool this host may use (throws the reason); returns the chains to pin. */
  checkStorage(spec: VmSpec): Promise<DiskChains>;
  /** The VM's folder moved (storage move). */
  configMoved(name: string, configPath: string): void;
  /** Tap devices for the VM's NICs (incoming QEMU), and their removal. */
  prepareNics(spec: VmSpec): Promise<(nicId: string, switchName: string) => SwitchBackend>;
  releaseNics(spec: VmSpec): Promise<void>;
}

/** Where moves and their journals persist (the agent's database). */
export interface MoveStore {
  saveMigration(r: MigrationRecord): void;
  getMigration(id: string): MigrationRecord | undefined;
  listMigrations(limit: number): MigrationRecord[];
  /**
   * Appends one journal entry of a move (synchronously durable: written before the step acts).
   * `durable: false` only for an entry that changes nothing recovery reads (a step's end with
   * no new data): it becomes durable with the next durable write.
   */
  journalAppend(moveId: string, entry: JournalEntry, opts?: { durable?: boolean }): void;
  journalRead(moveId: string): JournalEntry[];
  /** Moves with a journal (unfinished or not yet cleaned), for recovery. */
  journalMoves(): string[];
  journalDrop(moveId: string): void;
}

/** The cluster this host belongs to, seen from a move (null when standalone). */
export interface MoveCluster {
  readonly name: string;
  /** Is `node` a member of this cluster? */
  isMember(node: string): Promise<boolean>;
  /** Is `node` paused (drained): it takes no VMs. */
  isPaused(node: string): Promise<boolean>;
  /** Waits in the cluster-wide queue until the leader admits the move. */
  enterQueue(
    item: { id: string; vm: string; from: string; to: string; priority: Priority; batch?: string },
    opts: { signal: AbortSignal; onPosition: (position: number | null) => void },
  ): Promise<void>;
  leaveQueue(id: string): Promise<void>;
  position(id: string): number | null;
  /** Keeps the cluster's record of an HA VM pointing at this node and its current files. */
  recordHa(spec: VmSpec): Promise<void>;
  /**
   * Before an arriving HA VM's guest runs here: its record passes from `source` to this node, or
   * this throws (a leader gave it to a third node, or etcd does not answer).
   */
  claimArrival(spec: VmSpec, source: string, opts?: { signal?: AbortSignal }): Promise<void>;
  /**
   * An HA VM may run here: the record names this node or none. Throws E_HA_OWNED_ELSEWHERE when
   * it names another, E_CLUSTER_UNAVAILABLE when etcd does not answer.
   */
  mayBoot(spec: VmSpec, opts?: { signal?: AbortSignal }): Promise<void>;
  /** The VM left the cluster (moved to a host outside it): delete its record. */
  forgetVm(name: string): Promise<void>;
}

export interface MoveHost {
  readonly name: string;
  readonly domainId: string;
  /** The agent's data folder (QEMU's TLS folder and journals live under it). */
  readonly dataDir: string;
  /** This host's certificate, key and the domain's CA (peer calls, QEMU's TLS). */
  readonly tls: TlsFiles;
  readonly emit: Emit;
  readonly vms: MoveVms;
  readonly store: MoveStore;
  /** The cluster, when this host is in one and joined. */
  cluster(): MoveCluster | null;
  settings(): MigrationSettings;
  accelerator(): Accelerator;
  pools(): PoolDef[];
  hostView(): Promise<HostView>;
  cpuModels(): Promise<CpuModelInfo[]>;
  /**
   * Where this host listens for migration streams and NBD exports: an address facing `peer`
   * when given; on an agent listening on every address, `localAddress` (where the request came in).
   */
  migrationListenAddress(peer?: string, localAddress?: string): string;
  /** A port of the host's migration port range (any free port when none is set). */
  migrationPort(address: string, opts: { signal?: AbortSignal }): Promise<PortLease>;
  /** The folder of a VM's runtime files (QMP sockets, pidfile). */
  runDir(vmId: string): string;
}
