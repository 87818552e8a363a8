// The cluster store: our own small interface over etcd (etcd3 1.1.2 underneath), so the
// rest of Ferry never sees the client library. Every key is relative to a prefix given
// at connect (e.g. `/ferry/clusters/lab/`); every call has a timeout and honours a
// signal; every failure is a FerryError with an `E_STORE_*` code.
//
// What etcd3 does not give us, and is built here:
//  - a dial timeout (`dialTimeout` is accepted by etcd3 1.1.2 but never used): connect
//    probes the cluster with a linearizable read until `dialTimeoutMs`;
//  - safe retries: etcd3's default policy retries every "recoverable" error three times,
//    a timed-out or dropped transaction included, which can run a write twice (a CAS then
//    reports failure although it was applied). Here reads and idempotent writes (put,
//    delete, lease grant/revoke, the campaign's create-if-absent) are retried on any
//    transient error until the deadline, transactions only when the request never
//    reached etcd (a timed-out transaction is E_STORE_TIMEOUT: outcome unknown);
//  - keepalives that survive a frozen member, and prompt lease-loss detection: etcd3
//    keeps one keepalive stream on one member, switches only after a TTL of silence, and
//    reports a lost lease only when etcd answers "expired" or 2×TTL after the last
//    keepalive; here every keepalive is its own short call and the loss is reported as
//    soon as no keepalive succeeded for one TTL;
//  - elections with cancellation: etcd3's Campaign cannot be aborted while it waits (its
//    internal watcher stays until the current leader goes, and keeps reconnecting after
//    the client is closed), and its default TTL is 60 s. `campaign` implements the same
//    algorithm (and the same key layout: `election/<name>/<lease id>`, value = candidate,
//    so etcd3's Election.leader()/observe() read it) on the primitives below.
import fsp from 'node:fs/promises';
import {
  Etcd3,
  Namespace,
  Watcher,
  type IOptions,
  type IKeyValue,
  GRPCUnavailableError,
  GRPCDeadlineExceededError,
  GRPCCancelledError,
  GRPCUnauthenticatedError,
  EtcdLeaseInvalidError,
  EtcdPermissionDeniedError,
  ClientClosedError,
  castGrpcError,
  isRecoverableError,
  type ILeaseKeepAliveResponse,
} from 'etcd3';
import { ConsecutiveBreaker, circuitBreaker, handleWhen } from 'cockatiel';
import { AbortedError, FerryError, InvalidInputError, messageOf } from '../errors.js';
import { sleep } from '../util/exec.js';

// ---------------------------------------------------------------------------------------
// The interface

export interface StoreCallOptions {
  signal?: AbortSignal;
  /** Overrides the store's call timeout (default 5 s) for this call. */
  timeoutMs?: number;
}

/** A lease: keys put with it vanish when it is revoked or expires. */
export interface Lease {
  /** etcd's lease id (decimal). */
  readonly id: string;
  readonly ttlSeconds: number;
  /** True once the lease is known or feared lost (onLost has been called). */
  readonly lost: boolean;
  /** Ends the lease now: its keys vanish at once. */
  revoke(opts?: StoreCallOptions): Promise<void>;
  /** Stops the keepalives, as a crash would: the keys vanish within the TTL. No onLost. */
  release(): void;
}

export type Op = { type: 'put'; key: string; value: string; lease?: Lease } | { type: 'delete'; key: string };

/** Compare on a key: `version` (0 = the key is absent) and/or `value`; all must hold. */
export interface Compare {
  key: string;
  version?: number;
  value?: string;
}

export interface LeaseWatch {
  onLost?: (err: FerryError) => void;
  /** How long without a successful keepalive counts as lost (default: the TTL). */
  lossAfterMs?: number;
  /** Called with the time (ms) the grant, then each successful keepalive, was sent. */
  onRenewed?: (sentAtMs: number) => void;
  /**
   * When another holder last renewed this lease successfully (ms; 0: never), asked only when the
   * holder's own keepalives fell silent for the loss margin: the host's fence bridges a busy
   * agent's late renewals (fence.ts), and the lease is then not lost.
   */
  renewedElsewhere?: () => number;
  /**
   * Keepalives this far apart (default keepalivePeriodMs: 0.5 s). An election candidate that
   * waits renews every third of the TTL: its lease only keeps its place in the queue, and it
   * speeds up once elected (a leader's lease decides how long a dead leader holds on).
   */
  periodMs?: number;
}

export interface TxnRequest {
  compare: Compare[];
  success: Op[];
  failure?: Op[];
}

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  value: string | null;
}

export interface Leadership {
  readonly election: string;
  readonly candidateId: string;
  /**
   * The election key this leader holds (relative to the prefix; its value is the
   * candidate id). Use it as a fence in decisions: `compare: [{ key, value: candidateId }]`.
   */
  readonly key: string;
  readonly lost: boolean;
  /** `cb` runs once if leadership is lost (lease lost, key deleted); never after resign(). */
  onLost(cb: (err: FerryError) => void): void;
  /** Gives leadership up: the key is deleted and the next candidate is elected. */
  resign(opts?: StoreCallOptions): Promise<void>;
}

export interface CampaignOptions {
  signal?: AbortSignal;
  onLost?: (err: FerryError) => void;
  /** TTL of the leader's lease: how long a dead leader keeps leadership (default 5 s). */
  ttlSeconds?: number;
}

export interface ClusterStore {
  readonly prefix: string;
  get(key: string, opts?: StoreCallOptions): Promise<string | null>;
  /** Keys (relative to the store's prefix) and values under `prefix`. */
  getPrefix(prefix: string, opts?: StoreCallOptions): Promise<Record<string, string>>;
  put(key: string, value: string, opts?: StoreCallOptions & { lease?: Lease }): Promise<void>;
  delete(key: string, opts?: StoreCallOptions): Promise<void>;
  /** Atomic compare-and-swap; true when the compares held (and `success` ran). */
  txn(req: TxnRequest, opts?: StoreCallOptions): Promise<boolean>;
  /**
   * A lease kept alive until revoked, released or lost; `onLost` runs once when it is lost or
   * cannot be renewed; `onRenewed` hears when the grant and each successful keepalive were sent.
   */
  grantLease(ttlSeconds: number, opts?: StoreCallOptions & LeaseWatch): Promise<Lease>;
  /**
   * One keepalive for a lease this connection did not grant (the host's fence keeping its dead
   * agent's node lease): resolves to the TTL etcd restarted, in seconds; E_STORE_LEASE_LOST when
   * etcd answers that the lease expired or was revoked.
   */
  keepAliveOnce(leaseId: string, opts?: StoreCallOptions): Promise<number>;
  /** Calls `cb` for every change under `prefix` from now on; resolves to a cancel function. */
  watchPrefix(
    prefix: string,
    cb: (ev: WatchEvent) => void,
    opts?: StoreCallOptions & { onError?: (err: FerryError) => void },
  ): Promise<() => Promise<void>>;
  /** Resolves when `candidateId` is the leader of `election`; waits until then (or until `signal` aborts). */
  campaign(election: string, candidateId: string, opts?: CampaignOptions): Promise<Leadership>;
  /** The current leader's candidate id, or null. */
  leader(election: string, opts?: StoreCallOptions): Promise<string | null>;
  /**
   * Closes the connection. Leases and leadership are not revoked (as after a crash): their
   * keys vanish within their TTL; revoke or resign first for an immediate hand-over.
   */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------
// Errors

type CallKind = 'read' | 'idempotent' | 'txn';

const STORE_HINT =
  'check that a quorum of etcd members runs and is reachable at the endpoints (ferry lab status), ' +
  'and that the certificate belongs to the domain';

/** True when the request certainly did not reach etcd (so even a write may be retried). */
/** gRPC messages of a request that never reached etcd (safe to send again). */
const NOT_SENT = new RegExp(
  'No connection established|ECONNREFUSED|failed to connect|there is no (address|connection) available|no leader',
  'i',
);

function notSent(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (isBrokenCircuit(err)) return true; // cockatiel: the host was skipped, nothing sent
  if (!(err instanceof GRPCUnavailableError)) return false;
  return NOT_SENT.test(err.message);
}

function transient(err: unknown): boolean {
  return (
    err instanceof GRPCUnavailableError ||
    err instanceof GRPCDeadlineExceededError ||
    err instanceof GRPCCancelledError ||
    isBrokenCircuit(err)
  );
}

/** cockatiel's BrokenCircuitError (etcd3's per-member circuit breaker is open). */
function isBrokenCircuit(err: unknown): boolean {
  return (
    typeof err === 'object' && err !== null && (err as { isBrokenCircuitError?: unknown }).isBrokenCircuitError === true
  );
}

export function storeError(what: string, err: unknown, context: Record<string, unknown> = {}): FerryError {
  if (err instanceof FerryError) return err;
  const detail = messageOf(err).replace(/\s+Please report this error at \S+/, '');
  if (err instanceof ClientClosedError) {
    return new FerryError('E_STORE_CLOSED', `Cannot ${what}: the store connection is closed; connect again`, {
      cause: err,
      context,
    });
  }
  if (err instanceof EtcdLeaseInvalidError) {
    return new FerryError(
      'E_STORE_LEASE_LOST',
      `Cannot ${what}: the lease expired or was revoked; grant a new lease and put the keys again`,
      { cause: err, context },
    );
  }
  if (err instanceof EtcdPermissionDeniedError || err instanceof GRPCUnauthenticatedError) {
    return new FerryError(
      'E_STORE_DENIED',
      `Cannot ${what}: etcd refused the request (${detail}); use a certificate of the cluster's domain`,
      { cause: err, context },
    );
  }
  if (err instanceof GRPCDeadlineExceededError) {
    return new FerryError('E_STORE_TIMEOUT', `Cannot ${what}: etcd did not answer in time (${detail}); ${STORE_HINT}`, {
      cause: err,
      context,
    });
  }
  if (transient(err)) {
    return new FerryError('E_STORE_UNAVAILABLE', `Cannot ${what}: ${detail}; ${STORE_HINT}`, { cause: err, context });
  }
  return new FerryError('E_STORE_FAILED', `Cannot ${what}: ${detail}; ${STORE_HINT}`, { cause: err, context });
}

// ---------------------------------------------------------------------------------------
// Leases

type Etcd3Lease = ReturnType<Namespace['lease']>;

/**
 * Keeps a lease alive and reports its loss once. etcd3's own keepalive keeps one stream
 * on one member and switches only after a whole TTL of silence, so a frozen member costs
 * every lease on it; here each keepalive is a separate short call (every TTL/3, retried
 * at once on another member after a failure, each bounded by a deadline). The lease is
 * reported lost when etcd says it expired, or when no keepalive succeeded for a TTL
 * counted from when the last successful one was *sent* (by then the server-side lease
 * has expired, unless an etcd leader change extended it).
 */
/**
 * How often a lease holder renews: every TTL/3, and at least every 500 ms, so that a short
 * outage (an etcd leader election takes 1–2 s) right after one renewal still leaves attempts
 * before the holder's loss margin runs out.
 */
export function keepalivePeriodMs(ttlMs: number): number {
  return Math.min(ttlMs / 3, 500);
}

class LeaseKeeper {
  private lastOk: number;
  private timer: NodeJS.Timeout | undefined;
  /** A keepalive is on its way. */
  private sending = false;
  private watchdog: NodeJS.Timeout;
  private done = false;

  /**
   * `lossAfterMs` (default: the TTL) is how long without a successful keepalive counts as
   * lost. Shorter than the TTL gives a holder time to act (self-fence) before etcd can
   * expire the lease and others act on it.
   */
  constructor(
    private readonly inner: Etcd3Lease,
    private readonly ttlMs: number,
    grantedAt: number,
    private readonly onLoss: (err: FerryError) => void,
    lossAfterMs = ttlMs,
    private readonly onRenewed: (sentAtMs: number) => void = () => undefined,
    private readonly renewedElsewhere: () => number = () => 0,
    private periodMs = keepalivePeriodMs(ttlMs),
  ) {
    this.lastOk = grantedAt;
    this.renewed(grantedAt);
    inner.on('lost', (err) => this.lose(storeError('keep the lease alive', err)));
    this.watchdog = setInterval(
      () => {
        const now = Date.now();
        const silent = now - this.lastOk > lossAfterMs ? now - Math.max(this.lastOk, this.renewedElsewhere()) : 0;
        if (silent > lossAfterMs) {
          this.lose(
            new FerryError(
              'E_STORE_LEASE_LOST',
              `Cannot keep the lease alive: no keepalive succeeded for ${silent} ms ` +
                `(TTL ${this.ttlMs} ms); ${STORE_HINT}`,
            ),
          );
        }
      },
      // Checked often: a self-fence acts at most this late after its margin ran out.
      Math.min(100, Math.max(50, this.ttlMs / 8)),
    );
    this.watchdog.unref();
    this.schedule(this.periodMs);
  }

  /** Renews every `ms` from now on, the first at once (unless one is on its way). */
  every(ms: number): void {
    if (this.done || ms === this.periodMs) return;
    this.periodMs = ms;
    if (this.sending) return; // it schedules the next by the new period
    clearTimeout(this.timer);
    this.schedule(0);
  }

  get lost(): boolean {
    return this.done;
  }

  private schedule(ms: number): void {
    if (this.done) return;
    this.timer = setTimeout(() => void this.beat(), ms);
    this.timer.unref();
  }

  private async beat(): Promise<void> {
    this.sending = true;
    try {
      await this.renew();
    } finally {
      this.sending = false;
    }
  }

  private async renew(): Promise<void> {
    const sentAt = Date.now();
    const attemptMs = Math.max(500, Math.min(this.ttlMs / 4, 2000));
    try {
      await Promise.race([
        this.inner.keepaliveOnce({ deadline: sentAt + attemptMs }),
        // keepaliveOnce waits for 'data' or 'error' only; a stream that just ends would hang it.
        sleep(attemptMs + 250).then(() => {
          throw new GRPCDeadlineExceededError('keepalive: no answer');
        }),
      ]);
      this.lastOk = Math.max(this.lastOk, sentAt);
      this.renewed(this.lastOk);
      this.schedule(Math.max(0, this.periodMs - (Date.now() - sentAt)));
    } catch (err) {
      if (err instanceof EtcdLeaseInvalidError) {
        this.lose(storeError('keep the lease alive', err));
        return;
      }
      this.schedule(100); // another member (etcd3 picks one at random, skipping open circuits)
    }
  }

  private renewed(at: number): void {
    try {
      this.onRenewed(at);
    } catch {
      /* a callback's failure is its own */
    }
  }

  private lose(err: FerryError): void {
    if (this.done) return;
    this.stop();
    try {
      this.onLoss(err);
    } catch {
      /* a callback's failure is its own */
    }
  }

  /** Stops the keepalives without reporting (revoke, release, resign, close, loss). */
  stop(): void {
    this.done = true;
    clearTimeout(this.timer);
    clearInterval(this.watchdog);
    this.inner.release(); // etcd3 side: nothing more to do, no 'lost' after this
  }
}

class EtcdLease implements Lease {
  private lostFlag = false;
  private guard!: LeaseKeeper;

  constructor(
    readonly id: string,
    readonly ttlSeconds: number,
    private readonly inner: Etcd3Lease,
    private readonly store: EtcdStore,
  ) {}

  /** @internal */
  watch(grantedAt: number, w: LeaseWatch = {}): void {
    this.guard = new LeaseKeeper(
      this.inner,
      this.ttlSeconds * 1000,
      grantedAt,
      (err) => {
        this.lostFlag = true;
        this.store.forget(this);
        w.onLost?.(err);
      },
      w.lossAfterMs,
      w.onRenewed,
      w.renewedElsewhere,
      w.periodMs,
    );
  }

  /** @internal Keepalives every `ms` from now on (an elected candidate's: as often as a leader needs). */
  renewEvery(ms: number): void {
    this.guard.every(ms);
  }

  get lost(): boolean {
    return this.lostFlag;
  }

  async revoke(opts: StoreCallOptions = {}): Promise<void> {
    this.guard.stop();
    this.store.forget(this);
    await this.store.call(`revoke lease ${this.id}`, 'idempotent', () => this.inner.revoke(), opts);
  }

  release(): void {
    this.guard.stop();
    this.store.forget(this);
    this.inner.release();
  }
}

// ---------------------------------------------------------------------------------------
// The etcd implementation

export interface ConnectOptions {
  /** Client URLs, e.g. https://127.0.0.1:2379; all https when `tls` is given. */
  endpoints: string[];
  /** File paths (or PEM text) of the domain's CA and this host's certificate and key. */
  tls?: { ca: string; cert: string; key: string };
  /** How long to wait for the cluster to answer a linearizable read (default 5 s). */
  dialTimeoutMs?: number;
  /** Timeout of each call unless the call says otherwise (default 5 s). */
  callTimeoutMs?: number;
  /** Every key is relative to this, e.g. `/ferry/clusters/lab/`. */
  prefix: string;
  signal?: AbortSignal;
}

async function pem(v: string): Promise<Buffer> {
  return v.includes('-----BEGIN') ? Buffer.from(v) : fsp.readFile(v);
}

/** A global policy that never retries: retries are decided per call by EtcdStore. */
const noRetry = {
  execute: <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T): Promise<T> =>
    Promise.resolve().then(() => fn({ signal: new AbortController().signal })),
} as unknown as NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

type WatchBackoff = NonNullable<NonNullable<IOptions['faultHandling']>['watchBackoff']>;
/**
 * Watch reconnects: 100 ms doubling to 2 s. etcd3's default grows to 30 s, and its watch
 * manager also arms that timer when the last watcher is cancelled or the client closes,
 * which kept a finished process alive for up to 30 s.
 */
function backoffFrom(ms: number): WatchBackoff {
  return { duration: ms, next: () => backoffFrom(Math.min(ms * 2, 2000)) };
}
const watchBackoff = { duration: 0, next: () => backoffFrom(100) } as unknown as WatchBackoff;

/**
 * Each member's circuit breaker: open after 3 failures in a row (a dead member is skipped, not
 * waited for), tried again after 0.5 s (one call then waits for it). etcd3's default waits 5 s:
 * when a member dies with its host while it leads Raft, the others also fail every call until
 * a new leader is elected (1–2 s), so all circuits opened and every call, the lease keepalives
 * too, failed for 5 s — longer than a node's fence margin: the surviving nodes fenced their
 * own HA VMs.
 */
const memberBreaker = (): ReturnType<typeof circuitBreaker> =>
  circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 500, breaker: new ConsecutiveBreaker(3) });

const ELECTION = 'election';

export class EtcdStore implements ClusterStore {
  private readonly leases = new Set<EtcdLease>();
  private readonly campaigns = new Set<AbortController>();
  private readonly watchers = new Set<Watcher>();
  private closed = false;

  private constructor(
    private readonly client: Etcd3,
    private readonly ns: Namespace,
    readonly prefix: string,
    private readonly callTimeoutMs: number,
  ) {}

  static async connect(o: ConnectOptions): Promise<EtcdStore> {
    if (!o.endpoints.length)
      throw new InvalidInputError("Cannot connect to etcd: no endpoint given; pass the members' client URLs", {});
    for (const e of o.endpoints) {
      if (!/^https?:\/\/[^/\s]+:\d+\/?$/.test(e))
        throw new InvalidInputError(`Cannot connect to etcd at '${e}': an endpoint is http(s)://HOST:PORT`, {
          endpoint: e,
        });
      if (o.tls && !e.startsWith('https://'))
        throw new InvalidInputError(`Cannot connect to etcd at '${e}' with TLS: use https:// endpoints`, {
          endpoint: e,
        });
    }
    if (!o.prefix.startsWith('/'))
      throw new InvalidInputError(
        `Cannot use the store prefix '${o.prefix}': it must start with '/' (e.g. /ferry/clusters/lab/)`,
        { prefix: o.prefix },
      );
    const callTimeoutMs = o.callTimeoutMs ?? 5000;
    const dialTimeoutMs = o.dialTimeoutMs ?? 5000;
    let credentials: IOptions['credentials'];
    if (o.tls) {
      try {
        credentials = {
          rootCertificate: await pem(o.tls.ca),
          certChain: await pem(o.tls.cert),
          privateKey: await pem(o.tls.key),
        };
      } catch (err) {
        throw new FerryError(
          'E_STORE_TLS',
          `Cannot connect to etcd: cannot read the TLS files (${messageOf(err)}); ` +
            'check the paths of the CA, certificate and key',
          { cause: err },
        );
      }
    }
    const client = new Etcd3({
      hosts: o.endpoints.map((e) => e.replace(/\/$/, '')),
      credentials,
      // Per attempt; EtcdStore.call bounds the whole call. Streams (watch, keepalive) have none.
      // Short enough that a frozen member costs one attempt, not the whole call.
      defaultCallOptions: (ctx) =>
        ctx.isStream ? {} : { deadline: Date.now() + Math.max(1000, Math.min(callTimeoutMs / 3, 3000)) },
      faultHandling: { global: noRetry, host: memberBreaker, watchBackoff },
      // HTTP/2 pings find a frozen member under a watch or keepalive stream; etcd's server
      // refuses pings more often than every 5 s (--grpc-keepalive-min-time) and without a stream.
      grpcOptions: {
        'grpc.keepalive_time_ms': 5000,
        'grpc.keepalive_timeout_ms': 2000,
        'grpc.keepalive_permit_without_calls': 0,
      },
    });
    const store = new EtcdStore(client, client.namespace(o.prefix), o.prefix, callTimeoutMs);
    try {
      await store.call(`connect to etcd at ${o.endpoints.join(', ')}`, 'read', () => store.ns.get('.probe').exec(), {
        timeoutMs: dialTimeoutMs,
        signal: o.signal,
      });
    } catch (err) {
      client.close();
      throw err;
    }
    return store;
  }

  /**
   * Runs one etcd call with an overall deadline and the retry rules (reads and idempotent
   * writes: any transient error; transactions: only when the request never reached etcd).
   * @internal
   */
  async call<T>(what: string, kind: CallKind, fn: () => Promise<T>, opts: StoreCallOptions = {}): Promise<T> {
    this.assertOpen(what);
    const timeoutMs = opts.timeoutMs ?? this.callTimeoutMs;
    const until = Date.now() + timeoutMs;
    let lastErr: unknown;
    for (let attempt = 0; ; attempt++) {
      if (opts.signal?.aborted) throw new AbortedError(what, opts.signal.reason);
      const left = until - Date.now();
      if (left <= 0) break;
      let timer: NodeJS.Timeout | undefined;
      let onAbort: (() => void) | undefined;
      try {
        return await Promise.race([
          fn(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new StoreTimeout()), left);
            onAbort = () => reject(new AbortedError(what, opts.signal?.reason));
            opts.signal?.addEventListener('abort', onAbort, { once: true });
          }),
        ]);
      } catch (err) {
        if (err instanceof AbortedError) throw err;
        if (err instanceof StoreTimeout) {
          lastErr = lastErr ?? err;
          break;
        }
        lastErr = err;
        const retry = kind === 'txn' ? notSent(err) : transient(err);
        if (!retry || this.closed) throw storeError(what, err);
        await sleep(Math.min(50 * 2 ** attempt, 500), opts.signal).catch(() => undefined);
      } finally {
        clearTimeout(timer);
        if (onAbort) opts.signal?.removeEventListener('abort', onAbort);
      }
    }
    const outcome = kind === 'txn' ? 'the outcome is unknown, read the keys before retrying; ' : '';
    const last = lastErr && !(lastErr instanceof StoreTimeout) ? ` (last error: ${messageOf(lastErr)})` : '';
    throw new FerryError(
      'E_STORE_TIMEOUT',
      `Cannot ${what}: no answer within ${timeoutMs} ms${last}; ${outcome}${STORE_HINT}`,
      { cause: lastErr, context: { timeoutMs } },
    );
  }

  private assertOpen(what: string): void {
    if (this.closed)
      throw new FerryError('E_STORE_CLOSED', `Cannot ${what}: the store connection is closed; connect again`);
  }

  /** @internal */
  forget(lease: EtcdLease): void {
    this.leases.delete(lease);
  }

  async get(key: string, opts?: StoreCallOptions): Promise<string | null> {
    return this.call(`get ${key}`, 'read', () => this.ns.get(key).string(), opts);
  }

  async getPrefix(prefix: string, opts?: StoreCallOptions): Promise<Record<string, string>> {
    return this.call(`list ${prefix}`, 'read', () => this.ns.getAll().prefix(prefix).strings(), opts);
  }

  async put(key: string, value: string, opts: StoreCallOptions & { lease?: Lease } = {}): Promise<void> {
    this.checkLease(`put ${key}`, opts.lease);
    await this.call(
      `put ${key}`,
      'idempotent',
      () => {
        const b = this.ns.put(key).value(value);
        return (opts.lease ? b.lease(opts.lease.id) : b).exec();
      },
      opts,
    );
  }

  async delete(key: string, opts?: StoreCallOptions): Promise<void> {
    await this.call(`delete ${key}`, 'idempotent', () => this.ns.delete().key(key).exec(), opts);
  }

  async txn(req: TxnRequest, opts?: StoreCallOptions): Promise<boolean> {
    const touched = new Set([...req.compare, ...req.success, ...(req.failure ?? [])].map((x) => x.key));
    const what = `commit a transaction on ${[...touched].join(', ')}`;
    for (const c of req.compare) {
      if (c.version === undefined && c.value === undefined)
        throw new InvalidInputError(`Cannot ${what}: the compare on '${c.key}' names neither a version nor a value`, {
          key: c.key,
        });
      if (c.version !== undefined && (!Number.isInteger(c.version) || c.version < 0))
        throw new InvalidInputError(`Cannot ${what}: version ${c.version} of '${c.key}' is not a whole number ≥ 0`, {
          key: c.key,
        });
    }
    for (const op of [...req.success, ...(req.failure ?? [])]) if (op.type === 'put') this.checkLease(what, op.lease);
    const toOp = (op: Op) =>
      op.type === 'put'
        ? op.lease
          ? this.ns.put(op.key).value(op.value).lease(op.lease.id)
          : this.ns.put(op.key).value(op.value)
        : this.ns.delete().key(op.key);
    const res = await this.call(
      what,
      'txn',
      () => {
        const checks: Array<[string, 'Version' | 'Value', string | number]> = [];
        for (const c of req.compare) {
          if (c.version !== undefined) checks.push([c.key, 'Version', c.version]);
          if (c.value !== undefined) checks.push([c.key, 'Value', c.value]);
        }
        // No compare: an always-true one (every key's version is > -1), so the ops still run atomically.
        const [first, ...rest] = checks;
        let b = first
          ? this.ns.if(first[0], first[1], '==', first[2])
          : this.ns.if(req.success[0]?.key ?? '', 'Version', '>', -1);
        for (const [k, t, v] of rest) b = b.and(k, t, '==', v);
        return b
          .then(...req.success.map(toOp))
          .else(...(req.failure ?? []).map(toOp))
          .commit();
      },
      opts,
    );
    return res.succeeded;
  }

  private checkLease(what: string, lease: Lease | undefined): void {
    if (lease?.lost)
      throw new FerryError(
        'E_STORE_LEASE_LOST',
        `Cannot ${what}: lease ${lease.id} is lost; grant a new lease and put the keys again`,
        { context: { lease: lease.id } },
      );
  }

  async grantLease(ttlSeconds: number, opts: StoreCallOptions & LeaseWatch = {}): Promise<Lease> {
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1)
      throw new InvalidInputError(`Cannot grant a lease of ${ttlSeconds} s: the TTL is a whole number of seconds ≥ 1`, {
        ttlSeconds,
      });
    const { lease } = await this.newLease(ttlSeconds, opts, opts);
    return lease;
  }

  private async newLease(
    ttlSeconds: number,
    opts: StoreCallOptions,
    w: LeaseWatch = {},
  ): Promise<{ lease: EtcdLease }> {
    if (this.closed)
      throw new FerryError('E_STORE_CLOSED', 'Cannot grant a lease: the store connection is closed; connect again');
    const sentAt = Date.now();
    // etcd3 sends the grant when the Lease is constructed; a failed grant emits 'lost' (handled) and rejects grant().
    const inner = this.ns.lease(ttlSeconds, { autoKeepAlive: false });
    inner.on('lost', () => undefined); // a failed grant also emits 'lost'
    let id: string;
    try {
      id = await this.call(`grant a lease of ${ttlSeconds} s`, 'idempotent', () => inner.grant(), opts);
    } catch (err) {
      inner.release();
      throw err;
    }
    const lease = new EtcdLease(id, ttlSeconds, inner, this);
    lease.watch(sentAt, w);
    this.leases.add(lease);
    return { lease };
  }

  async keepAliveOnce(leaseId: string, opts: StoreCallOptions = {}): Promise<number> {
    const what = `keep lease ${leaseId} alive`;
    const timeoutMs = opts.timeoutMs ?? this.callTimeoutMs;
    const res = await this.call(
      what,
      'idempotent',
      async () => {
        // A stream (etcd's only keepalive RPC), used for one request; its deadline ends it if etcd never answers.
        const stream = await this.ns.leaseClient.leaseKeepAlive({ deadline: Date.now() + timeoutMs });
        try {
          return await new Promise<ILeaseKeepAliveResponse>((resolve, reject) => {
            stream.on('data', resolve);
            stream.on('error', (err: Error) => reject(castGrpcError(err)));
            stream.on('end', () => reject(new GRPCUnavailableError('keepalive stream ended without an answer')));
            stream.write({ ID: leaseId });
          });
        } finally {
          stream.end();
        }
      },
      opts,
    );
    const ttl = Number(res.TTL);
    if (!(ttl > 0))
      throw new FerryError(
        'E_STORE_LEASE_LOST',
        `Cannot ${what}: etcd says the lease expired or was revoked; its keys are gone, grant a new lease`,
        { context: { lease: leaseId } },
      );
    return ttl;
  }

  async watchPrefix(
    prefix: string,
    cb: (ev: WatchEvent) => void,
    opts: StoreCallOptions & { onError?: (err: FerryError) => void } = {},
  ): Promise<() => Promise<void>> {
    const what = `watch ${prefix}`;
    const watcher = this.ns.watch().prefix(prefix).watcher();
    this.watchers.add(watcher);
    const emit = (ev: WatchEvent): void => {
      try {
        cb(ev);
      } catch {
        /* etcd3 would rethrow it from setImmediate and crash the process */
      }
    };
    watcher.on('put', (kv: IKeyValue) => emit({ type: 'put', key: kv.key.toString(), value: kv.value.toString() }));
    watcher.on('delete', (kv: IKeyValue) => emit({ type: 'delete', key: kv.key.toString(), value: null }));
    watcher.on('disconnected', () => undefined); // etcd3 reconnects and resumes from the last revision
    watcher.on('error', (err) => {
      // unrecoverable (e.g. compacted revision): the watch has ended
      this.watchers.delete(watcher);
      try {
        opts.onError?.(storeError(what, err));
      } catch {
        /* its own */
      }
    });
    const cancel = async (): Promise<void> => {
      if (!this.watchers.delete(watcher)) return;
      await Promise.race([watcher.cancel().catch(() => undefined), sleep(2000)]);
    };
    try {
      await this.call(
        what,
        'read',
        () =>
          new Promise<void>((resolve, reject) => {
            watcher.once('connected', () => resolve());
            watcher.once('error', reject);
          }),
        opts,
      );
    } catch (err) {
      await cancel();
      throw err;
    }
    return cancel;
  }

  async leader(election: string, opts?: StoreCallOptions): Promise<string | null> {
    const res = await this.call(
      `find the leader of ${election}`,
      'read',
      () => this.ns.getAll().prefix(`${ELECTION}/${election}/`).sort('Create', 'Ascend').limit(1).exec(),
      opts,
    );
    return res.kvs[0]?.value.toString() ?? null;
  }

  async campaign(election: string, candidateId: string, opts: CampaignOptions = {}): Promise<Leadership> {
    const what = `campaign for leadership of ${election} as ${candidateId}`;
    if (!/^[A-Za-z0-9._-]+$/.test(election))
      throw new InvalidInputError(`Cannot ${what}: an election name is letters, digits, dot, dash or underscore`, {
        election,
      });
    const ttl = opts.ttlSeconds ?? 5;
    if (opts.signal?.aborted) throw new AbortedError(what, opts.signal.reason);
    const pfx = `${ELECTION}/${election}/`;
    const leadership = new EtcdLeadership(this, election, candidateId, opts.onLost);
    const { lease } = await this.newLease(
      ttl,
      { signal: opts.signal },
      { onLost: (err) => leadership.fail(err), periodMs: (ttl * 1000) / 3 },
    );
    leadership.attach(lease, `${pfx}${lease.id}`);
    const key = leadership.key;
    const stop = new AbortController();
    this.campaigns.add(stop);
    const onAbort = (): void => stop.abort(new AbortedError(what, opts.signal?.reason));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    leadership.onLostWhileWaiting = (err) => stop.abort(err);
    try {
      // Same algorithm as etcd's Go client (concurrency.Election.Campaign).
      // Idempotent: a retry after a lost answer finds our own key (the else branch).
      const res = await this.call(
        what,
        'idempotent',
        () =>
          this.ns
            .if(key, 'Create', '==', 0)
            .then(this.ns.put(key).value(candidateId).lease(lease.id))
            .else(this.ns.get(key))
            .commit(),
        { signal: stop.signal },
      );
      let myRev = BigInt(res.header.revision);
      if (!res.succeeded) {
        const kv = res.responses[0]?.response_range.kvs[0]; // the else branch is a get
        if (kv) myRev = BigInt(kv.create_revision);
        await this.put(key, candidateId, { lease, signal: stop.signal });
      }
      // Wait until no key of this election was created before ours.
      for (;;) {
        const prev = await this.call(
          what,
          'read',
          () =>
            this.ns
              .getAll()
              .prefix(pfx)
              .maxCreateRevision(String(myRev - 1n))
              .sort('Create', 'Descend')
              .limit(1)
              .exec(),
          { signal: stop.signal },
        );
        const kv = prev.kvs[0];
        if (!kv) break;
        await this.waitDeleted(kv.key.toString(), BigInt(prev.header.revision) + 1n, stop.signal, what);
      }
      if (stop.signal.aborted) throw stop.signal.reason;
      lease.renewEvery(keepalivePeriodMs(ttl * 1000));
      await leadership.elected(stop.signal);
      // Its own key deleted with the one it waited for (an administrator clearing the election):
      // not leader, however the wait ended; before, it returned a leadership already lost.
      if (leadership.lost)
        throw new FerryError('E_STORE_LEADERSHIP_LOST', `Cannot ${what}: its election key was deleted; campaign again`);
      return leadership;
    } catch (err) {
      const reason: unknown = stop.signal.aborted ? stop.signal.reason : err;
      await lease.revoke({ timeoutMs: 2000 }).catch(() => lease.release());
      throw reason instanceof FerryError ? reason : storeError(what, reason);
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      leadership.onLostWhileWaiting = undefined;
      this.campaigns.delete(stop);
    }
  }

  /** Resolves when `key` is deleted (watching from `fromRev`); rejects when `signal` aborts. */
  private async waitDeleted(key: string, fromRev: bigint, signal: AbortSignal, what: string): Promise<void> {
    const watcher = this.ns.watch().key(key).startRevision(String(fromRev)).only('delete').watcher();
    this.watchers.add(watcher);
    try {
      await new Promise<void>((resolve, reject) => {
        const aborted = (): void => {
          reject(signal.reason instanceof Error ? signal.reason : new AbortedError(what, signal.reason));
        };
        if (signal.aborted) {
          aborted();
          return;
        }
        signal.addEventListener('abort', aborted, { once: true });
        watcher.on('delete', () => resolve());
        watcher.on('disconnected', () => undefined);
        watcher.on('error', (err) => reject(storeError(what, err)));
      });
    } finally {
      this.watchers.delete(watcher);
      await Promise.race([watcher.cancel().catch(() => undefined), sleep(2000)]);
    }
  }

  /** @internal Watches a leader's own key: deleted by anyone → leadership lost. */
  async watchKeyDeleted(key: string, onDeleted: () => void, signal: AbortSignal): Promise<() => Promise<void>> {
    const rev = await this.call(`watch ${key}`, 'read', () => this.ns.get(key).exec(), { signal });
    if (!rev.kvs.length) {
      onDeleted();
      return () => Promise.resolve();
    }
    const watcher = this.ns
      .watch()
      .key(key)
      .startRevision(String(BigInt(rev.header.revision) + 1n))
      .only('delete')
      .watcher();
    this.watchers.add(watcher);
    watcher.on('delete', () => onDeleted());
    watcher.on('disconnected', () => undefined);
    watcher.on('error', () => undefined); // the lease guard still reports a loss
    return async () => {
      if (!this.watchers.delete(watcher)) return;
      await Promise.race([watcher.cancel().catch(() => undefined), sleep(2000)]);
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const closedErr = new FerryError(
      'E_STORE_CLOSED',
      'Cannot campaign for leadership: the store connection was closed; connect again',
    );
    for (const c of [...this.campaigns]) c.abort(closedErr);
    for (const l of [...this.leases]) l.release();
    this.leases.clear();
    const ws = [...this.watchers];
    this.watchers.clear();
    await Promise.all(ws.map((w) => Promise.race([w.cancel().catch(() => undefined), sleep(1000)])));
    this.closed = true;
    this.client.close();
  }
}

class StoreTimeout extends Error {}

class EtcdLeadership implements Leadership {
  key = '';
  private lease: Lease | null = null;
  private lostFlag = false;
  private resigned = false;
  private isLeader = false;
  private readonly callbacks: Array<(err: FerryError) => void> = [];
  private unwatch: (() => Promise<void>) | null = null;
  /** @internal set while campaigning: a loss then fails the campaign. */
  onLostWhileWaiting: ((err: FerryError) => void) | undefined;

  constructor(
    private readonly store: EtcdStore,
    readonly election: string,
    readonly candidateId: string,
    onLost?: (err: FerryError) => void,
  ) {
    if (onLost) this.callbacks.push(onLost);
  }

  get lost(): boolean {
    return this.lostFlag;
  }

  attach(lease: Lease, key: string): void {
    this.lease = lease;
    this.key = key;
  }

  async elected(signal: AbortSignal): Promise<void> {
    this.unwatch = await this.store.watchKeyDeleted(
      this.key,
      () =>
        this.fail(
          new FerryError(
            'E_STORE_LEADERSHIP_LOST',
            `Cannot stay leader of ${this.election}: the election key ${this.key} was deleted; campaign again`,
          ),
        ),
      signal,
    );
    this.isLeader = true;
  }

  onLost(cb: (err: FerryError) => void): void {
    if (this.lostFlag && this.lastErr) {
      const e = this.lastErr;
      queueMicrotask(() => cb(e));
      return;
    }
    this.callbacks.push(cb);
  }

  private lastErr: FerryError | null = null;

  /** @internal */
  fail(err: FerryError): void {
    if (this.lostFlag || this.resigned) return;
    const e =
      err.code === 'E_STORE_LEADERSHIP_LOST'
        ? err
        : new FerryError(
            'E_STORE_LEADERSHIP_LOST',
            `Cannot stay leader of ${this.election}: ${err.message.replace(/^Cannot [^:]*: /, '')}`,
            { cause: err },
          );
    this.lostFlag = true;
    this.lastErr = e;
    this.onLostWhileWaiting?.(e);
    void this.unwatch?.();
    // Give the key up (if it still exists), so the next candidate does not wait for the TTL.
    if (this.lease && !this.lease.lost) void this.lease.revoke({ timeoutMs: 2000 }).catch(() => this.lease?.release());
    if (!this.isLeader) return;
    for (const cb of this.callbacks) {
      try {
        cb(e);
      } catch {
        /* its own */
      }
    }
  }

  async resign(opts: StoreCallOptions = {}): Promise<void> {
    if (this.resigned) return;
    this.resigned = true;
    await this.unwatch?.();
    if (this.lease && !this.lease.lost) await this.lease.revoke(opts);
  }
}
