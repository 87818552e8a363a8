// What the source's steps share: the move's context (host, job, VM, destination) and the
// checks and calls several kinds use (is the destination reachable, did the source's QEMU
// complete, why does the destination say it failed, drop a stalled stream's connections).
import fs from 'node:fs';
import net from 'node:net';
import { FerryError, type ErrorCode } from '../errors.js';
import { AgentClient } from '../api/client.js';
import { peerActions } from '../api/peer-actions.js';
import type { HostView } from '../api/schemas.js';
import type { StorageDaemon } from '../qemu/storage-daemon.js';
import type { QemuProcess } from '../qemu/process.js';
import type { VmSpec } from '../vm/spec.js';
import { run } from '../util/exec.js';
import type { MoveHost } from './host.js';
import type { Job } from './job.js';
import type { SlotQueue } from './queue.js';
import type { Destination, MoveOptions } from './schemas.js';
import type { SharedNothingPlan } from './plan.js';
import type { MirrorSpec } from './block.js';
import type { BackupSpec } from './resume-copy.js';
import type { Gathered } from './begin.js';

export class MigrationFailedError extends FerryError {
  constructor(code: ErrorCode, message: string, cause?: unknown) {
    super(code, message, { cause });
  }
}

/** Everything the steps of a move between two hosts read. */
export interface SourceCtx {
  host: MoveHost;
  job: Job;
  to: Destination;
  dest: AgentClient;
  /** This host's live-migration slots (released while the destination keeps the move waiting). */
  slots: SlotQueue;
  /**
   * The pre-flight compare the request ran a moment ago: the compare step reuses it unless
   * the move waited (in the cluster's queue, for a slot) and conditions may have changed.
   */
  preflight?: Gathered | null;
  /** Set by the compare step (Begin). */
  spec: VmSpec | null;
  destView: HostView | null;
  options: MoveOptions;
  /** Shared nothing: where each file goes on the destination (set by the compare step). */
  plan: SharedNothingPlan | null;
  /** The VM's QEMU when it runs (live and shared-nothing of a running VM). */
  proc: QemuProcess | null;
  /** A stopped VM's disks opened for a resumable copy (kinds/stopped-copy.ts). */
  daemon?: StorageDaemon | null;
  /** What the destination's Prepare answered. */
  prep: {
    uri: string | null;
    nbd: { host: string; port: number } | null;
    tlsHostname: string;
    /** A checkpoint chain to send first: where the destination serves its files. */
    chainNbd?: { host: string; port: number } | null;
    /** A resumable copy's retry: per disk, whether the destination took its kept image over. */
    resume?: Array<{ diskId: string; resume: boolean; why?: string | undefined }> | undefined;
  } | null;
  /** The batch (drain, fail-back) this move belongs to. */
  batch?: string;
  /** Shared nothing: the disk mirrors, READY until switch-over finishes them. */
  mirrors: MirrorSpec[];
  /** Shared nothing by backup passes (kinds/backup-copy.ts): the disks' last pass runs at switch-over. */
  backups?: BackupSpec[];
  /** Where the memory copy sits on the progress bar (after the disks of a shared-nothing move). */
  memSpan: [number, number];
  /** Set when the ladder asked QEMU for post-copy: when (Date.now()) and how long after the copy began. */
  postcopy?: { askedAtMs: number; afterMs: number; eventMark: number };
  /** The memory streams' multifd channels, as asked of the destination at Prepare (0: one stream). */
  multifdChannels?: number;
  /** The source QEMU's TLS object, being made while the destination prepares (kinds/live.ts tlsStep). */
  tlsReady?: Promise<void>;
}

/**
 * A failure after the switch to post-copy. The guest's memory is split between the hosts:
 * the destination ran it with the pages it had, the source holds the rest, and neither can
 * run it again (QEMU's rule). The source is never resumed.
 */
export class PostcopyLostError extends FerryError {
  constructor(
    vm: string,
    source: string,
    destination: string,
    home: string,
    why: string,
    cause?: unknown,
    caveat = '',
  ) {
    super(
      'E_POSTCOPY_LOST',
      `Cannot finish moving VM '${vm}' to '${destination}': ${why} after it switched to post-copy; the guest ` +
        `is lost on both hosts (its memory is split between them, QEMU's rule) and '${source}' does not resume ` +
        `it. It stays on '${home}'${caveat ? ` (${caveat})` : ''}, whose disks are current: restart it from ` +
        `them with 'ferry vm stop ${vm} --force', then 'ferry vm start ${vm}'`,
      { cause, context: { vm, source, destination, home } },
    );
  }
}

export function peerClient(host: MoveHost, to: Destination): AgentClient {
  return new AgentClient({ endpoint: to.endpoint, host: to.name, credentials: host.tls });
}

/** When the certificate files last changed (a renewal or a new CRL): a client made before must not be reused. */
function credentialStamp(t: MoveHost['tls']): string {
  return [t.ca, t.cert, t.key, t.crl]
    .map((f) => (f ? (fs.statSync(f, { throwIfNoEntry: false })?.mtimeMs ?? 0) : 0))
    .join(':');
}

/**
 * One client per destination, kept between moves: its keep-alive TLS connections are reused,
 * where a client per move read the certificates again and paid a handshake for the compare,
 * another for the move (issue 17). Never closed while the agent runs: a move may be using it.
 */
export class PeerClients {
  private cache = new Map<string, { stamp: string; client: AgentClient }>();
  constructor(private readonly host: MoveHost) {}

  get(to: Destination): AgentClient {
    const key = `${to.name} ${to.endpoint}`;
    const stamp = credentialStamp(this.host.tls);
    const c = this.cache.get(key);
    if (c?.stamp === stamp) return c.client;
    const client = peerClient(this.host, to);
    this.cache.set(key, { stamp, client });
    return client;
  }
}

export function needSpec(ctx: SourceCtx): VmSpec {
  if (!ctx.spec) throw new FerryError('E_INTERNAL', `Cannot move VM '${ctx.job.record.vm}': no spec (compare skipped)`);
  return ctx.spec;
}

export function needProc(ctx: SourceCtx): QemuProcess {
  if (!ctx.proc) {
    throw new FerryError(
      'E_VM_NOT_RUNNING',
      `Cannot live-migrate VM '${ctx.job.record.vm}': it stopped before the move began; ` +
        'move it again (a stopped VM moves offline)',
    );
  }
  return ctx.proc;
}

/** No bytes moved for the watchdog's time: most likely the migration network is down. */
export function stalledError(vm: string, dest: string, ms: number, what = 'no data moved', destSays = ''): FerryError {
  const s = Math.round(ms / 1000);
  // The destination knows better when it is the cause (e.g. its pool is full).
  if (destSays && !destSays.includes('did not answer')) {
    return new MigrationFailedError(
      'E_MIGRATION_STALLED',
      `Cannot move VM '${vm}' to '${dest}': ${what} for ${s} s${destSays}; fix that and retry`,
    );
  }
  return new MigrationFailedError(
    'E_MIGRATION_STALLED',
    `Cannot move VM '${vm}' to '${dest}': ${what} for ${s} s (the migration network may be down); ` +
      'check the link and retry',
  );
}

/** Can this host open a TCP connection to host:port within `ms`? (The agent shares its QEMUs' network namespace.) */
export function reachable(
  host: string,
  port: number,
  ms: number,
  signal?: AbortSignal,
  refusedIsAnswer = false,
): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port, timeout: ms, ...(signal ? { signal } : {}) });
    const done = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.once('connect', () => {
      done(true);
    });
    sock.once('timeout', () => {
      done(false);
    });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      done(refusedIsAnswer && e.code === 'ECONNREFUSED');
    });
  });
}

/** host and port of a `tcp:HOST:PORT` stream URI. */
export function tcpTarget(uri: string | null): { host: string; port: number } | null {
  const m = uri ? /^tcp:(.+):(\d+)$/.exec(uri) : null;
  return m?.[1] && m[2] ? { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) } : null;
}

/**
 * A stalled copy's TCP connections wait for the kernel's retransmission timeout (~15 min):
 * QEMU's NBD client keeps its requests (a mirror then cannot be cancelled nor its node
 * deleted) and its migration thread its write. Closing them (`ss -K`, in this agent's
 * network namespace, which its QEMUs share) makes QEMU see the failure now.
 */
export async function dropConnections(prep: SourceCtx['prep']): Promise<void> {
  if (!prep) return;
  const stream = tcpTarget(prep.uri);
  for (const p of [...(stream ? [stream] : []), ...(prep.nbd ? [prep.nbd] : [])]) {
    await run('ss', ['-K', 'dst', p.host, 'dport', '=', String(p.port)], { timeoutMs: 5000 }).catch(() => undefined);
  }
}

/** Why the destination says its side failed (appended to our message), or that it did not answer. */
export async function destReason(ctx: SourceCtx): Promise<string> {
  try {
    const v = await ctx.dest.call(peerActions.status, { params: { id: ctx.job.id } }, { timeoutMs: 5000 });
    return v.reason ? `; on ${ctx.to.name}: ${v.reason}` : '';
  } catch {
    return `; ${ctx.to.name} did not answer`;
  }
}

/** Has the source's QEMU completed the stream (the destination has the whole VM)? */
export async function sourceCompleted(proc: QemuProcess | null): Promise<boolean> {
  if (!proc || proc.hasExited) return false;
  try {
    const st = await proc.qmp.execute('query-migrate', undefined, { timeoutMs: 5000 });
    return st.status === 'completed';
  } catch {
    return false;
  }
}

/**
 * Tells the destination to abandon its side (kill its QEMU, remove what it created). A move
 * that was cancelled keeps no partial copy there (the administrator asked for nothing to stay);
 * one that failed keeps it for a retry to resume. Never throws.
 */
export async function abortDestination(ctx: SourceCtx, log: (m: string) => void): Promise<void> {
  const discard = ctx.job.signal.aborted;
  try {
    await ctx.dest.call(
      peerActions.abort,
      { params: { id: ctx.job.id }, query: { discard: discard ? 'true' : 'false' } },
      { timeoutMs: 30_000 },
    );
  } catch (err) {
    log(`cleaning up ${ctx.to.name}: ${(err as Error).message}`);
  }
}
