// The destination's half of the protocol (shared/DESIGN.md §4). Prepare is a list of journalled
// steps run by the same runner as the source's (runner.ts): folders, files and disks created
// exclusively, QEMU started with `-S -incoming defer` listening on this host's migration
// address on a port opened for this one migration. Finish runs the VM only after the source
// completed and confirmed (two-phase: the VM never runs on both hosts). Abort — and recovery
// after an agent restart — undo exactly what Prepare's journal says it created.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { MAX_INCOMING_STEPS, type IncomingRequest, type IncomingView } from '../api/peer-actions.js';
import { INCOMING_CONTENT_TYPE } from '../api/incoming-body.js';
import { AbortedError, FerryError, InvalidInputError, messageOf } from '../errors.js';
import type { DiskChains } from '../qemu/argv.js';
import { killQemus, qemusOfRunDir, type QemuProcess } from '../qemu/process.js';
import { assertInUsablePool, poolStatus, type PoolDef } from '../storage/pools.js';
import { configFile, exists, saveVm } from '../vm/folder.js';
import { startVm } from '../vm/lifecycle.js';
import { parseVmSpec, resolveVmFile, type VmSpec } from '../vm/spec.js';
import { arrivingSpec, decideArrival } from './arrival.js';
import { assertHaStorage, haFiles, sharedPoolHint } from '../cluster/ha-storage.js';
import type { MoveHost } from './host.js';
import type { JournalEntry } from './journal.js';
import { claimFile, makeFolders, poolRoots, removeFolders, writeNewFile } from './claim.js';
import { newImage } from './block.js';
import {
  answerOffers,
  keepEntries,
  keepImages,
  sweepKeptImages,
  takeOver,
  type KeptAnswer,
} from './incoming-resume.js';
import { testHold } from './policy.js';
import { ResumeOffer } from './resume-marker.js';
import type { SlotQueue } from './queue.js';
import {
  StepRunner,
  startedFromJournal,
  undoSteps,
  type MoveKind,
  type RunOutcome,
  type RunnerSink,
  type Step,
} from './runner.js';
import { tenthMs, type MigrationState } from './schemas.js';
import { addTlsCreds, qemuTlsDir } from './tls.js';
import {
  chainDoneStep,
  chainFilesStep,
  chainServerStep,
  checkChain,
  peerDn,
  startNbdServer,
  type ChainRole,
} from './incoming-chain.js';
import { imageOf, TREE_DIR } from '../checkpoint/model.js';

export { peerDn };

type Storage = NonNullable<IncomingRequest['storage']>;

interface Incoming {
  jobId: string;
  spec: VmSpec;
  source: string;
  req: IncomingRequest;
  proc: QemuProcess | null;
  state: IncomingView['state'];
  uri: string | null;
  reason: string | null;
  nbd: { host: string; port: number } | null;
  /** Disk files Prepare created (for the full-pool diagnosis). */
  disks: string[];
  /** The source cancelled the move: its undo keeps no partial copy for a retry. */
  discard?: boolean;
  /** Why the VM arrives not HA (it left its cluster); its vm.json is rewritten on arrival. */
  haNote: string | null;
  /** A checkpoint chain: 0 none, 1 its files are being received, 2 received (incoming-chain.ts). */
  chainStage: 0 | 1 | 2;
  chainRoles: ChainRole[];
  chainServer: QemuProcess | null;
  chainNbd: { host: string; port: number } | null;
  /** Smart Paging: the file its RAM arrives in (this host lacked the memory), else null. */
  memoryFile?: string | null;
  /** The disks' chains checked at Prepare (shared storage: the files exist then), pinned into QEMU's nodes. */
  chains: DiskChains;
  /** A resumable copy: per disk with a kept image or an offer, whether it is taken over (incoming-resume.ts). */
  resume?: KeptAnswer[];
  /** Prepare's steps and their times (ms after the request arrived), for the source's record. */
  steps?: NonNullable<IncomingView['steps']>;
  /** When the Prepare request arrived (performance.now()). */
  receivedAt?: number;
  /** The VM folder's files to create (storage.files with their bytes), until the files step wrote them. */
  files?: SentFile[];
  /** Prepare's steps while they run: abort() stops them and waits, so none starts a QEMU after it. */
  running?: { ac: AbortController; done: Promise<RunOutcome> };
}

interface IncomingCtx {
  host: MoveHost;
  slots: SlotQueue;
  item: Incoming;
  signal?: AbortSignal;
  /** This host's end of the source's request (the address to advertise on a 0.0.0.0 agent). */
  localAddress?: string;
}

/** A file of the VM folder as Prepare received it. */
interface SentFile {
  path: string;
  data: Buffer;
}

/**
 * The folder's files with their bytes: after the request's JSON (`size`), or inside it (`base64`,
 * an older source). The request keeps only their names and sizes from here on.
 */
function takeFiles(req: IncomingRequest, sent: Buffer[] | undefined): SentFile[] {
  const st = req.storage;
  if (!st) return [];
  const out = st.files.map((f, i): SentFile => {
    if (f.base64 !== undefined) return { path: f.path, data: Buffer.from(f.base64, 'base64') };
    const data = sent?.[i];
    if (!data || data.length !== f.size)
      throw new InvalidInputError(
        `Cannot receive the files of VM '${req.spec.name}': file ${i + 1} (${f.path.slice(0, 300)}) came ` +
          `without its ${f.size ?? 0} bytes; send the request as ${INCOMING_CONTENT_TYPE}, the bytes after the JSON`,
      );
    return { path: f.path, data };
  });
  st.files = out.map((f) => ({ path: f.path, size: f.data.length }));
  return out;
}

const MiB = 1048576;
const journalId = (jobId: string): string => `in-${jobId}`;

const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);

/** Steps of Prepare's first part (a move with a checkpoint chain runs the rest once the chain is here). */
const first = (ctx: IncomingCtx): boolean => ctx.item.chainStage !== 2;
/** Steps that open the disks: not before the chain they sit on is here. */
const second = (ctx: IncomingCtx): boolean => ctx.item.chainStage !== 1;

const slotStep: Step<IncomingCtx> = {
  name: 'slot',
  phase: 'preparing',
  when: first,
  run(ctx) {
    const { item, host } = ctx;
    if (!ctx.slots.tryAcquire(item.jobId)) {
      throw new FerryError(
        'E_HOST_BUSY',
        `Cannot receive VM '${item.spec.name}' on host '${host.name}' now: ${host.settings().maxLive} live ` +
          'migrations are already running here (max live); it stays queued',
      );
    }
    return Promise.resolve({ vm: item.spec.name, vmId: item.spec.id });
  },
  undo(ctx) {
    ctx.slots.release(ctx.item.jobId);
    return Promise.resolve();
  },
};

const runDirStep: Step<IncomingCtx> = {
  name: 'run-dir',
  phase: 'preparing',
  when: first,
  async run(ctx, s) {
    const runDir = ctx.host.runDir(ctx.item.spec.id);
    const created = !(await exists(runDir));
    s.record({ runDir, created });
    return { runDir, created };
  },
  async undo(_ctx, data) {
    const runDir = typeof data.runDir === 'string' ? data.runDir : null;
    if (!runDir) return;
    if (data.created) await fsp.rm(runDir, { recursive: true, force: true });
    else
      for (const f of ['qmp.sock', 'qmp-admin.sock', 'qemu.pid', 'argv.json'])
        await fsp.rm(path.join(runDir, f), { force: true });
  },
};

const dirsStep: Step<IncomingCtx> = {
  name: 'dirs',
  phase: 'preparing',
  when: (ctx) => ctx.item.req.storage !== undefined && first(ctx),
  async run(ctx, s) {
    const st = ctx.item.req.storage as Storage;
    const created = await makeFolders(
      poolRoots(ctx.host.pools()),
      [...st.dirs, ...st.disks.map((d) => path.dirname(d.path))],
      (c) => {
        s.record({ created: c });
      },
    );
    return { created };
  },
  async undo(ctx, data) {
    await removeFolders(poolRoots(ctx.host.pools()), strings(data.created));
  },
};

const filesStep: Step<IncomingCtx> = {
  name: 'files',
  phase: 'preparing',
  when: (ctx) => ctx.item.req.storage !== undefined && first(ctx),
  async run(ctx, s) {
    const { item, host } = ctx;
    // Only plain names joined onto the VM folder, checked again now that it exists (real path
    // inside a usable pool), each created exclusively without following a link.
    const folder = await checkedFolder(host.pools(), host.name, item.spec.configPath);
    const created: string[] = [];
    for (const f of item.files ?? []) {
      const file = path.join(folder, fileName(item.spec, f.path));
      await writeNewFile(poolRoots(host.pools()), file, f.data, `a file of VM '${item.spec.name}'`, () => {
        created.push(file);
        s.record({ created });
      });
    }
    delete item.files;
    return { created };
  },
  async undo(_ctx, data) {
    for (const f of strings(data.created)) await fsp.rm(f, { force: true });
  },
};

const disksStep: Step<IncomingCtx> = {
  name: 'disks',
  phase: 'preparing',
  when: (ctx) => ctx.item.req.storage !== undefined && second(ctx),
  async run(ctx, s) {
    const { item } = ctx;
    const st = item.req.storage as Storage;
    const created: string[] = [];
    const roots = poolRoots(ctx.host.pools());
    // A resumable copy's images are kept by the undo (with a marker), not deleted.
    const keep = keepEntries(st, item.spec.id, item.source);
    if (keep) s.record({ created, keep });
    for (const d of st.disks) {
      if (item.resume?.some((a) => a.diskId === d.id && a.resume)) {
        // A kept image taken over: written on from the cut, not created.
        await takeOver(ctx.host.dataDir, item.spec.id, d.id);
        item.disks.push(d.path);
        continue;
      }
      const what = `disk '${d.id}' of VM '${item.spec.name}'`;
      // Its QEMU opens the disks when it starts: QEMU cannot format them (newImage's inQemu).
      const img = newImage(d.path, d.format, d.virtualSizeBytes, {
        inQemu: false,
        signal: ctx.signal,
        ...chainBacking(item, d),
      });
      await claimFile(roots, d.path, what, {
        claimed: () => {
          created.push(d.path);
          item.disks.push(d.path);
          s.record({ created, ...(keep ? { keep } : {}) });
        },
        ...img.claim,
      });
    }
    return { created, ...(keep ? { keep } : {}) };
  },
  async undo(ctx, data) {
    const kept = ctx.item.discard ? [] : Array.isArray(data.keep) ? data.keep : [];
    const keep = kept.flatMap((k) => {
      const r = ResumeOffer.safeParse(k);
      return r.success ? [r.data] : [];
    });
    const stays = await keepImages(ctx.host.dataDir, keep);
    for (const f of strings(data.created)) if (!stays.some((k) => k.path === f)) await fsp.rm(f, { force: true });
  },
};

const configStep: Step<IncomingCtx> = {
  name: 'config',
  phase: 'preparing',
  when: (ctx) => ctx.item.req.storage !== undefined && second(ctx),
  async run(ctx, s) {
    const file = configFile(ctx.item.spec.configPath);
    await claimFile(poolRoots(ctx.host.pools()), file, `the config of VM '${ctx.item.spec.name}'`);
    s.record({ file });
    await saveVm(ctx.item.spec);
    return { file };
  },
  async undo(_ctx, data) {
    if (typeof data.file === 'string') await fsp.rm(data.file, { force: true });
  },
};

const qemuStep: Step<IncomingCtx> = {
  name: 'qemu',
  phase: 'preparing',
  when: second,
  async run(ctx, s) {
    ctx.signal?.throwIfAborted();
    const { host, item } = ctx;
    const spec = item.spec;
    // Incoming mode also for a stopped VM's disks: its images stay inactive for the guest
    // devices, so the NBD exports may write them (a running -S QEMU's devices would not share).
    // The destination decides where a running VM's RAM goes: ordinary memory, or (Smart
    // Paging) a file in its paging folder; a VM without it is refused here when there is no room.
    const memoryFile = item.req.stopped ? null : await host.vms.memoryFor(spec, 'move');
    item.memoryFile = memoryFile;
    const mem = memoryFile ? { memoryFile } : {};
    s.record({ ...mem });
    // Disks made by Prepare (a copy, an overlay on a received chain) did not exist at the first check.
    const chains = item.req.storage ? await host.vms.checkStorage(spec) : item.chains;
    const switches = await host.vms.prepareNics(spec);
    s.record({ nics: true, ...mem });
    await testHold('incoming-qemu', s.log, ctx.signal);
    const proc = await startVm(spec, {
      runDir: host.runDir(spec.id),
      accel: host.accelerator(),
      incoming: true,
      switches,
      chains,
      pools: host.pools(),
      host: host.name,
      ...mem,
      ...(ctx.signal ? { signal: ctx.signal } : {}),
    });
    await testHold('incoming-spawned', s.log);
    item.proc = proc;
    s.record({ nics: true, pid: proc.pid, ...mem });
    void proc.exited.then(() => host.vms.releaseNics(spec));
    return { nics: true, pid: proc.pid, ...mem };
  },
  async undo(ctx, data) {
    const proc = ctx.item.proc;
    if (proc) await proc.kill();
    else {
      // An agent killed between the spawn and the record of its pid left a QEMU no journal
      // names: its command line names this VM's run folder (the VM is not ours, so none else does).
      const pids = new Set(qemusOfRunDir(ctx.host.runDir(ctx.item.spec.id)));
      if (typeof data.pid === 'number') pids.add(data.pid);
      await killQemus([...pids]);
    }
    if (data.nics) await ctx.host.vms.releaseNics(ctx.item.spec);
    if (typeof data.memoryFile === 'string') await fsp.rm(data.memoryFile, { force: true });
  },
};

const listenStep: Step<IncomingCtx> = {
  name: 'listen',
  phase: 'preparing',
  when: second,
  async run(ctx) {
    ctx.signal?.throwIfAborted();
    const { host, item } = ctx;
    const { req } = item;
    const proc = item.proc;
    if (!proc) throw new FerryError('E_QEMU_GONE', `Cannot receive VM '${item.spec.name}': its QEMU is gone`);
    const o = ctx.signal ? { signal: ctx.signal } : {};
    if (req.tls) {
      await addTlsCreds(proc.qmp, 'ferry-tls', 'server', await qemuTlsDir(host.tls, host.dataDir), ctx.signal);
      // Only the source host's certificate may connect to this VM's stream and NBD exports.
      await proc.qmp.execute(
        'object-add',
        { 'qom-type': 'authz-simple', id: 'ferry-authz', identity: peerDn(req.source, host.domainId) },
        o,
      );
    }
    if (!req.stopped) {
      const caps = [
        { capability: 'events' as const, state: true },
        { capability: 'late-block-activate' as const, state: true },
        ...(req.postcopy ? [{ capability: 'postcopy-ram' as const, state: true }] : []),
        ...(req.multifdChannels > 0 ? [{ capability: 'multifd' as const, state: true }] : []),
      ];
      await proc.qmp.execute('migrate-set-capabilities', { capabilities: caps }, o).catch((err: unknown) => {
        if (!req.postcopy) throw err;
        // QEMU 7.2 needs userfaultfd for post-copy: as an unprivileged user only with the sysctl.
        throw new FerryError(
          'E_POSTCOPY_UNSUPPORTED',
          `Cannot receive VM '${item.spec.name}' with post-copy on host '${host.name}': its QEMU cannot use ` +
            `userfaultfd (${messageOf(err)}); set 'sysctl vm.unprivileged_userfaultfd=1' on '${host.name}' ` +
            'or move it without --allow-postcopy',
          { cause: err },
        );
      });
      if (req.tls)
        await proc.qmp.execute('migrate-set-parameters', { 'tls-creds': 'ferry-tls', 'tls-authz': 'ferry-authz' }, o);
      // Both sides, before migrate-incoming (QEMU-NOTES §A).
      if (req.multifdChannels > 0)
        await proc.qmp.execute('migrate-set-parameters', { 'multifd-channels': req.multifdChannels }, o);
    }
    const addr = host.migrationListenAddress(req.source, ctx.localAddress);
    const hostPart = addr.includes(':') ? `[${addr}]` : addr;
    if (req.storage) {
      // NBD exports of the new, empty disks on the migration address, for the source's mirrors.
      const port = await startNbdServer(host, proc, addr, req.tls, o);
      for (const d of req.storage.disks) {
        await proc.qmp.execute(
          'block-export-add',
          {
            type: 'nbd',
            id: `exp-${d.id}`,
            'node-name': d.id,
            name: d.id,
            writable: true,
            // A resumable copy: a killed QEMU must not lose writes it acknowledged (resume-marker.ts).
            ...(req.storage.resumeKey ? { writethrough: true } : {}),
          },
          o,
        );
      }
      item.nbd = { host: addr, port };
    }
    if (!req.stopped) {
      const lease = await host.migrationPort(addr, o);
      try {
        await proc.qmp.execute('migrate-incoming', { uri: `tcp:${hostPart}:${String(lease.port)}` }, o);
      } finally {
        lease.release();
      }
      const info = await proc.qmp.execute('query-migrate', undefined, o);
      const port = info['socket-address']?.[0]?.port;
      if (!port)
        throw new FerryError(
          'E_PREPARE',
          `Cannot receive VM '${item.spec.name}': QEMU did not report its listening port`,
        );
      item.uri = `tcp:${hostPart}:${port}`;
    }
    return undefined;
  },
};

const prepareKind: MoveKind<IncomingCtx> = {
  name: 'incoming',
  steps: [
    slotStep,
    runDirStep,
    dirsStep,
    filesStep,
    chainFilesStep,
    chainServerStep,
    chainDoneStep,
    disksStep,
    configStep,
    qemuStep,
    listenStep,
  ],
};

/** A disk over a checkpoint chain: a new overlay on the copy of the current checkpoint's image (mirrored sync=top). */
function chainBacking(
  item: Incoming,
  d: Storage['disks'][number],
): { backing?: { path: string; format: 'qcow2' | 'raw' | 'vhdx' | 'vpc' } } {
  const tree = item.req.storage?.chain?.tree;
  const folder = path.join(path.resolve(item.spec.checkpointPath), TREE_DIR);
  if (!tree || path.dirname(d.path) !== folder || !tree.base[d.id]) return {};
  return { backing: imageOf(tree, folder, tree.current, d.id) };
}

/** Errors of Prepare the source gets as they are (their status and code), not as E_PREPARE. */
const PASSED_ON = new Set(['E_HOST_BUSY', 'E_PATH_LINK', 'E_POSTCOPY_UNSUPPORTED', 'E_MIGRATION_NETWORK']);

/** The destination's bookkeeping of one incoming move, as the runner sees it (always preparing). */
class IncomingSink implements RunnerSink {
  readonly phase: MigrationState = 'preparing';
  private seq: number;
  /** `after`: the journal so far (an abort or a recovery appends to the entries Prepare wrote). */
  constructor(
    readonly id: string,
    private readonly host: MoveHost,
    readonly signal: AbortSignal,
    after: JournalEntry[] = [],
    private readonly item?: Incoming,
  ) {
    this.seq = after.reduce((m, e) => Math.max(m, e.seq), 0);
  }
  timed(step: string, startedAt: number, ms: number, failed: boolean): void {
    if (this.item) stepTime(this.item, step, startedAt, ms, failed);
  }
  enter(): void {
    /* the destination's side has one phase */
  }
  log(): void {
    /* the destination's steps log nothing of their own; its events say what happened */
  }
  journal(entry: Omit<JournalEntry, 'seq' | 'at'>, opts?: { durable?: boolean }): void {
    const e = { ...entry, seq: ++this.seq, at: new Date().toISOString() };
    this.host.store.journalAppend(journalId(this.id), e, opts);
  }
}

/** Notes how long a step of Prepare or finish took (at most the view's limit). */
function stepTime(item: Incoming, name: string, startedAt: number, ms: number, failed = false): void {
  const steps = (item.steps ??= []);
  if (item.receivedAt === undefined || steps.length >= MAX_INCOMING_STEPS) return;
  steps.push({ name, atMs: tenthMs(startedAt - item.receivedAt), ms: tenthMs(ms), ...(failed ? { failed } : {}) });
}

/**
 * A VM that arrives not HA: its vm.json says so from now on. With shared storage that file is the
 * one the source ran from (Prepare wrote none), so it is rewritten only once the VM is ours.
 */
async function keepArrivalHa(i: Incoming): Promise<void> {
  if (i.haNote && i.req.storage === undefined) await saveVm(i.spec);
}

export class IncomingManager {
  private items = new Map<string, Incoming>();
  constructor(
    private readonly host: MoveHost,
    private readonly slots: SlotQueue,
  ) {}

  /**
   * Agent start: incoming VMs of a previous life that never finished are removed (their QEMU
   * killed, what Prepare created deleted), from the same journal and with the same undo steps
   * an abort uses; a VM that did finish is registered and is left alone.
   */
  async recover(): Promise<string[]> {
    const done: string[] = [];
    await sweepKeptImages(this.host.dataDir, new Set(this.host.vms.ids().map((v) => v.id))).catch(() => 0);
    for (const id of this.host.store.journalMoves().filter((x) => x.startsWith('in-'))) {
      const entries = this.host.store.journalRead(id);
      const jobId = id.slice(3);
      const first = entries.find((e) => e.step === 'slot' && e.data)?.data ?? {};
      const vmId = typeof first.vmId === 'string' ? first.vmId : '';
      const vmName = typeof first.vm === 'string' ? first.vm : '';
      if (!this.host.vms.ids().some((v) => v.id === vmId)) {
        const item = this.stub(jobId, vmName, vmId);
        const sink = new IncomingSink(jobId, this.host, AbortSignal.timeout(120_000), entries);
        await undoSteps(
          prepareKind,
          { host: this.host, slots: this.slots, item },
          startedFromJournal(prepareKind, entries),
          sink,
          {
            signal: AbortSignal.timeout(120_000),
            log: () => undefined,
          },
        );
        this.host.emit('migration.incoming', {
          vm: vmName,
          jobId,
          state: 'recovered',
          note: 'an unfinished incoming VM was removed after an agent restart',
        });
        done.push(jobId);
      }
      this.host.store.journalDrop(id);
    }
    return done;
  }

  /** An item standing for a journal's move (recovery has no request, only what was recorded). */
  private stub(jobId: string, name: string, id: string): Incoming {
    const spec = { name, id, nics: [], disks: [] } as unknown as VmSpec;
    return {
      jobId,
      spec,
      source: '',
      req: {} as IncomingRequest,
      proc: null,
      state: 'failed',
      uri: null,
      reason: null,
      nbd: null,
      disks: [],
      haNote: null,
      chainStage: 0,
      chainRoles: [],
      chainServer: null,
      chainNbd: null,
      chains: new Map(),
    };
  }

  /**
   * Refuses a host other than the move's source: a host certificate may prepare, follow, finish
   * or abort only moves it sends itself (an admin certificate may act on any).
   */
  assertSource(jobId: string, caller: { role: string; name: string } | undefined, source?: string): void {
    if (caller?.role === 'admin') return;
    // A move already here belongs to its source, whatever a new request claims (a Prepare that
    // reuses another host's job id and names itself as the source is refused too).
    for (const owner of [this.items.get(jobId)?.source, source]) {
      if (owner === undefined) continue; // unknown job: the action itself says so
      if (caller?.name !== owner)
        throw new FerryError(
          'E_FORBIDDEN',
          `Cannot act on incoming move ${jobId}: host '${caller?.name ?? '?'}' is not its source '${owner}'; ` +
            'a host may act only on the moves it sends',
        );
    }
  }

  view(jobId: string): IncomingView {
    const name = this.host.name;
    const i = this.items.get(jobId);
    if (!i) {
      return {
        jobId,
        vm: '',
        state: 'gone',
        uri: null,
        tlsHostname: name,
        reason: 'it has no such incoming move (its agent restarted and removed it, or it was aborted)',
        nbd: null,
      };
    }
    if (i.state === 'prepared' && i.proc?.hasExited) {
      i.state = 'failed';
      i.reason ??= 'the destination QEMU exited';
    }
    return {
      jobId,
      vm: i.spec.name,
      state: i.state,
      uri: i.uri,
      tlsHostname: name,
      reason: i.reason ?? this.diagnose(i),
      nbd: i.nbd,
      chainNbd: i.chainNbd,
      ...(i.haNote ? { haNote: i.haNote } : {}),
      ...(i.resume?.length ? { resume: i.resume } : {}),
      ...(i.steps?.length ? { steps: i.steps } : {}),
    };
  }

  /**
   * A write to an NBD export that fails for lack of space does not fail: QEMU holds it (its
   * default for ENOSPC is to stop and retry), so the source only sees a stall. Say why.
   */
  private diagnose(i: Incoming): string | null {
    if (i.state !== 'prepared' || !i.proc || i.proc.hasExited) return null;
    const ioErr = [...i.proc.qmp.history].reverse().find((e) => e.event === 'BLOCK_IO_ERROR');
    if (ioErr) {
      const d = ioErr.data ?? {};
      const text = (v: unknown): string | null => (typeof v === 'string' && v ? v : null);
      const dev = text(d.device) ?? text(d['node-name']) ?? '?';
      const full = d.nospace ? ': the destination pool is full' : '';
      return `disk '${dev}' cannot be written (${text(d.reason) ?? 'I/O error'}${full})`;
    }
    const full = [...new Set(i.disks.map((f) => path.dirname(f)))].find((d) => {
      try {
        const st = fs.statfsSync(d);
        return st.bavail * st.bsize < MiB;
      } catch {
        return false;
      }
    });
    return full ? `no space left in ${full} (the destination pool is full)` : null;
  }

  /** Names of VMs arriving here (they count as present for name checks). */
  arriving(): Array<{ name: string; id: string }> {
    return [...this.items.values()]
      .filter((i) => i.state === 'prepared')
      .map((i) => ({ name: i.spec.name, id: i.spec.id }));
  }

  /**
   * Prepare's steps for `item`, from where its journal left them. abort() may stop them: it
   * aborts their signal and waits for their own undo, so no step runs after it returns.
   */
  private runPrepare(
    item: Incoming,
    journal: JournalEntry[],
    opts: { signal?: AbortSignal; localAddress?: string },
  ): Promise<RunOutcome> {
    const ac = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, ac.signal]) : ac.signal;
    const sink = new IncomingSink(item.jobId, this.host, signal, journal, item);
    const done = new StepRunner(
      prepareKind,
      {
        host: this.host,
        slots: this.slots,
        item,
        signal,
        ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
      },
      sink,
    ).run();
    item.running = { ac, done };
    return done.finally(() => {
      if (item.running?.done === done) delete item.running;
    });
  }

  /** `files`: the folder's files' bytes that came after the request's JSON (api/incoming-body.ts). */
  async prepare(
    req: IncomingRequest,
    opts: { signal?: AbortSignal; localAddress?: string; files?: Buffer[] } = {},
  ): Promise<IncomingView> {
    const host = this.host;
    const receivedAt = performance.now();
    const files = takeFiles(req, opts.files);
    const sent = parseVmSpec(req.spec, 'accept the incoming VM');
    const arrival = await decideArrival(host.cluster(), sent, req.source);
    const spec = arrivingSpec(sent, arrival);
    if (!host.settings().enabled) {
      throw new FerryError(
        'E_MIGRATION_DISABLED',
        `Cannot receive VM '${spec.name}' on host '${host.name}': migrations are disabled here; ` +
          `run 'ferry host set ${host.name} --migrations on'`,
      );
    }
    const taken = [...host.vms.ids(), ...this.arriving()];
    if (this.items.has(req.jobId) || taken.some((v) => v.name === spec.name || v.id === spec.id)) {
      throw new FerryError(
        'E_NAME_EXISTS',
        `Cannot receive VM '${spec.name}' on host '${host.name}': a VM with that name or id is already here`,
      );
    }
    if (req.storage && spec.ha) {
      // Shared nothing inside the cluster: the HA VM's new files must be where every node sees them.
      assertHaStorage(
        haFiles(spec),
        host.pools(),
        `receive HA VM '${spec.name}' on host '${host.name}'`,
        `give a destination on a shared pool (--storage-path ${sharedPoolHint(host.pools())}), or first make it ` +
          `not HA ('ferry cluster remove-vm ${spec.name}')`,
        spec.name,
      );
    }
    await checkSpecPaths(host.pools(), host.name, spec, req.storage);
    const resume = req.storage ? await this.keptImages(spec, req.source, req.storage) : [];
    const reused = new Set(resume.filter((a) => a.resume).map((a) => a.diskId));
    if (req.storage) await this.checkStorage(spec, req.storage, reused);
    const chainRoles = req.storage ? await checkChain(host.pools(), host.name, spec, req.storage) : [];
    const chains = await host.vms.checkStorage(spec);
    const item: Incoming = {
      jobId: req.jobId,
      spec,
      source: req.source,
      req,
      proc: null,
      state: 'prepared',
      uri: null,
      reason: null,
      nbd: null,
      disks: [],
      haNote: arrival.note,
      chainStage: chainRoles.length ? 1 : 0,
      chainRoles,
      chainServer: null,
      chainNbd: null,
      chains,
      resume,
      receivedAt,
      files,
    };
    // The request's checks (paths inside pools, the disks' chains probed): before the first step.
    stepTime(item, 'checks', receivedAt, performance.now() - receivedAt);
    this.items.set(req.jobId, item);
    const out = await this.runPrepare(item, [], opts);
    if (out.result !== 'completed') {
      this.items.delete(req.jobId);
      host.store.journalDrop(journalId(req.jobId));
      // Busy, a path this host refuses (a link in a pool), or no post-copy here: each says what to do itself.
      if (out.error instanceof FerryError && PASSED_ON.has(out.error.code)) throw out.error;
      throw new FerryError(
        'E_PREPARE',
        `Cannot prepare host '${host.name}' to receive VM '${spec.name}': ${messageOf(out.error)}`,
        {
          cause: out.error,
        },
      );
    }
    host.emit('migration.incoming', { vm: spec.name, jobId: req.jobId, state: 'prepared', source: req.source });
    this.watchExit(item);
    return this.view(req.jobId);
  }

  /**
   * The source wrote the checkpoint chain: the rest of Prepare (the chain's server quits, the tree
   * is written, the disks, the VM's QEMU). A failure removes everything, the chain too.
   */
  async chain(jobId: string, opts: { signal?: AbortSignal; localAddress?: string } = {}): Promise<IncomingView> {
    const host = this.host;
    const item = this.items.get(jobId);
    if (!item || item.chainStage !== 1 || item.state !== 'prepared') {
      throw new FerryError(
        'E_INCOMING_NOT_FOUND',
        `Cannot finish receiving the checkpoints of incoming move ${jobId} on host '${host.name}': ` +
          (item ? 'it is not receiving a chain' : 'it is not here (aborted or never prepared)'),
      );
    }
    item.chainStage = 2;
    const out = await this.runPrepare(item, host.store.journalRead(journalId(jobId)), opts);
    if (out.result !== 'completed') {
      await this.abort(jobId);
      throw new FerryError(
        'E_PREPARE',
        `Cannot prepare host '${host.name}' to receive VM '${item.spec.name}': ${messageOf(out.error)}`,
        { cause: out.error },
      );
    }
    this.watchExit(item);
    return this.view(jobId);
  }

  private watchExit(item: Incoming): void {
    const proc = item.proc;
    const jobId = item.jobId;
    // A failed incoming migration makes QEMU exit: note why, from its stderr.
    void proc?.exited.then(async () => {
      if (item.state !== 'prepared') return;
      item.state = 'failed';
      // (The source's reachability probe of the NBD export leaves a harmless negotiation line.)
      const lines = (await proc.stderrText())
        .split('\n')
        .filter((l) => l.trim() && !l.includes('option negotiation failed'));
      item.reason = lines.join('\n') || 'the destination QEMU exited';
      // The source normally aborts us; if it does not within a minute, clean up anyway.
      setTimeout(() => {
        if (this.items.get(jobId) === item) void this.abort(jobId).catch(() => undefined);
      }, 60_000).unref();
    });
  }

  /** The source completed and confirms: wait for the stream's end here, then run the VM. */
  async finish(jobId: string, opts: { signal?: AbortSignal } = {}): Promise<IncomingView> {
    const host = this.host;
    const i = this.items.get(jobId);
    if (!i) {
      throw new FerryError(
        'E_INCOMING_NOT_FOUND',
        `Cannot finish incoming migration ${jobId} on host '${host.name}': it is not here (aborted or never prepared)`,
      );
    }
    if (i.state === 'running') return this.view(jobId);
    const proc = i.proc;
    if (!proc || proc.hasExited || i.state !== 'prepared') {
      throw new FerryError(
        'E_INCOMING_FAILED',
        `Cannot finish incoming VM '${i.spec.name}' on host '${host.name}': ${i.reason ?? 'its QEMU is gone'}`,
      );
    }
    if (i.req.stopped) {
      // A stopped VM's disks arrived: stop serving them, flush and quit, register the VM.
      await proc.qmp.execute('nbd-server-stop', undefined, opts).catch(() => undefined);
      await proc.quit({ timeoutMs: 10_000 });
      i.state = 'running';
      await keepArrivalHa(i);
      await host.vms.arrivedStopped(i.spec, { skipStorageCheck: true });
    } else {
      // Never `cont` before the incoming side has completed (QEMU would auto-run it later),
      // except in post-copy: there the source has already stopped the guest and sent its
      // device state, and this QEMU (started with -S) waits for `cont` to run it while its
      // pages still arrive. (A `cont` that comes before QEMU handled the switch makes it run
      // the guest as soon as it has: QEMU's autostart.)
      const until = Date.now() + 30_000;
      const t0 = performance.now();
      let postcopy = false;
      for (;;) {
        const mark = proc.qmp.eventMark;
        const st = await proc.qmp.execute('query-migrate', undefined, { signal: opts.signal, timeoutMs: 10_000 });
        if (st.status === 'completed') break;
        if (st.status === 'postcopy-active') {
          postcopy = true;
          break;
        }
        if (st.status === 'postcopy-paused' || st.status === 'postcopy-recover' || st.status === 'failed') {
          throw new FerryError(
            'E_INCOMING_FAILED',
            `Cannot finish incoming VM '${i.spec.name}': the stream failed on host '${host.name}'`,
          );
        }
        if (Date.now() > until) {
          throw new FerryError(
            'E_TIMEOUT',
            `Cannot finish incoming VM '${i.spec.name}' on host '${host.name}': the stream did not complete ` +
              'within 30 s',
          );
        }
        // Woken by QEMU's MIGRATION event (the 'events' capability is on), not a fixed sleep.
        await proc.qmp
          .waitEvent((ev) => ev.event === 'MIGRATION', { since: mark, timeoutMs: 250, signal: opts.signal })
          .catch(() => undefined);
      }
      // QEMU here loading what the source sent last (the guest is paused on both hosts meanwhile).
      const t1 = performance.now();
      stepTime(i, 'finish-incoming', t0, t1 - t0);
      if (i.nbd) await proc.qmp.execute('nbd-server-stop', undefined, opts).catch(() => undefined);
      // An HA VM runs here only once the cluster's record says so (a compare-and-swap from the
      // source): if a leader restarted it elsewhere meanwhile, it must not run twice. (In
      // post-copy the guest is then lost here, as on any failure after the switch.)
      await host.cluster()?.claimArrival(i.spec, i.source, opts);
      const mark = proc.qmp.eventMark;
      const run = await proc.qmp.execute('query-status', undefined, opts);
      if (!run.running) await proc.qmp.execute('cont', undefined, opts);
      if (postcopy && !run.running) {
        // Answer once the guest runs here (QEMU's RESUME), so the source's figure of the pause is true.
        await proc.qmp
          .waitEvent((ev) => ev.event === 'RESUME', { since: mark, timeoutMs: 10_000, signal: opts.signal })
          .catch(() => undefined);
      }
      // The HA claim and the guest run here (the guest's pause ends at `cont`).
      stepTime(i, 'finish-run', t1, performance.now() - t1);
      i.state = 'running';
      await keepArrivalHa(i);
      host.vms.arrivedRunning(i.spec, proc, i.memoryFile ?? null, { from: i.source, migration: jobId, since: mark });
    }
    host.store.journalDrop(journalId(jobId));
    this.slots.release(jobId);
    host.emit('migration.incoming', { vm: i.spec.name, jobId, state: 'running' });
    this.items.delete(jobId);
    return {
      jobId,
      vm: i.spec.name,
      state: 'running',
      uri: i.uri,
      tlsHostname: host.name,
      reason: null,
      nbd: null,
      ...(i.steps?.length ? { steps: i.steps } : {}),
    };
  }

  /**
   * Kills the incoming QEMU and removes what Prepare created (its journal says what), but a
   * resumable copy's images, which stay with a marker unless `discard` (a cancelled move). Idempotent.
   */
  async abort(jobId: string, opts: { discard?: boolean } = {}): Promise<void> {
    const host = this.host;
    const i = this.items.get(jobId);
    if (!i) return;
    if (opts.discard) i.discard = true;
    if (i.running) {
      // Prepare still runs (the source gave up waiting for it): stop it and let it undo itself,
      // or its next step would start a QEMU that nothing stops.
      const why = 'the source aborted the move';
      i.running.ac.abort(new AbortedError(`prepare host '${host.name}' for VM '${i.spec.name}'`, why));
      // Undone by its runner (prepare() then forgets it), or it had just completed: undo it here.
      if ((await i.running.done).result !== 'completed') return;
    }
    if (i.state === 'running') {
      throw new FerryError(
        'E_INCOMING_RUNNING',
        `Cannot abort incoming VM '${i.spec.name}': it already runs on host '${host.name}'`,
      );
    }
    this.items.delete(jobId);
    const id = journalId(jobId);
    const entries = host.store.journalRead(id);
    const sink = new IncomingSink(jobId, host, AbortSignal.timeout(120_000), entries);
    await undoSteps(prepareKind, { host, slots: this.slots, item: i }, startedFromJournal(prepareKind, entries), sink, {
      signal: AbortSignal.timeout(120_000),
      log: () => undefined,
    });
    host.store.journalDrop(id);
    host.emit('migration.incoming', { vm: i.spec.name, jobId, state: 'aborted' });
  }

  /**
   * Kept images of earlier cut moves: expired ones deleted, this VM's disks' ones taken over or
   * deleted (incoming-resume.ts). Only a move that copies by resumable passes (resumeKey) offers.
   */
  private async keptImages(spec: VmSpec, source: string, st: Storage): Promise<KeptAnswer[]> {
    const host = this.host;
    await sweepKeptImages(host.dataDir, new Set(host.vms.ids().map((v) => v.id)));
    return answerOffers(host.dataDir, spec.id, source, st);
  }

  /** Every destination path inside a pool this host may use, not taken, with room for the data. */
  private async checkStorage(spec: VmSpec, st: Storage, reused: ReadonlySet<string>): Promise<void> {
    const host = this.host;
    const pools = host.pools();
    const need = new Map<string, number>();
    for (const d of st.disks) {
      const pool = await assertInUsablePool(pools, host.name, d.path, `destination of disk ${d.id}`);
      if (reused.has(d.id)) continue; // a kept image taken over (its data is there already)
      if (await exists(d.path)) {
        throw new FerryError(
          'E_DEST_PATH',
          `Cannot receive disk '${d.id}' of VM '${spec.name}' at ${d.path} on host '${host.name}': ` +
            'a file is already there; choose another path',
        );
      }
      need.set(pool.name, (need.get(pool.name) ?? 0) + d.allocatedBytes);
    }
    for (const dir of st.dirs) await assertInUsablePool(pools, host.name, dir, 'destination folder');
    for (const f of st.files) {
      if (await exists(path.join(spec.configPath, fileName(spec, f.path)))) {
        throw new FerryError(
          'E_DEST_PATH',
          `Cannot receive VM '${spec.name}' on host '${host.name}': ${f.path} already exists; ` +
            'choose another --config-path or --storage-path',
        );
      }
    }
    if (await exists(configFile(spec.configPath))) {
      throw new FerryError(
        'E_DEST_PATH',
        `Cannot receive VM '${spec.name}' on host '${host.name}': ${spec.configPath} already holds a VM; ` +
          'choose another --config-path or --storage-path',
      );
    }
    for (const [name, bytes] of need) {
      const pool = pools.find((p) => p.name === name);
      if (!pool) continue;
      const status = await poolStatus(pool, host.name);
      if (bytes > status.freeBytes) {
        throw new FerryError(
          'E_DEST_SPACE',
          `Cannot receive VM '${spec.name}' on host '${host.name}': its disks hold ${(bytes / MiB).toFixed(0)} MiB ` +
            `but pool '${name}' has ${(status.freeBytes / MiB).toFixed(0)} MiB free; free space or choose another pool`,
        );
      }
    }
  }
}

/** The plain name of a file a peer sends for the VM folder; anything else is refused. */
function fileName(spec: VmSpec, p: string): string {
  const name = path.basename(p);
  const bad =
    p.includes('\0') ||
    path.resolve(p) !== p ||
    path.dirname(p) !== path.resolve(spec.configPath) ||
    name === '' ||
    name === '.' ||
    name === '..' ||
    name === 'vm.json' ||
    name.startsWith('vm.json.tmp') ||
    name.length > 255;
  if (bad)
    throw new InvalidInputError(
      `Cannot receive VM '${spec.name}': file '${p.slice(0, 300)}' is not a plain file name inside its folder ` +
        `${spec.configPath}; a move sends only the files of the VM folder`,
      { path: p.slice(0, 300) },
    );
  return name;
}

/** The real path of a folder that must exist inside a usable pool (symlinks resolved). */
async function checkedFolder(pools: PoolDef[], host: string, dir: string): Promise<string> {
  const real = await fsp.realpath(dir);
  await assertInUsablePool(pools, host, real, 'VM folder');
  return real;
}

/**
 * Every path of an arriving spec lies inside a pool this host may use (symbolic links
 * resolved): its folders, CD-ROM images and kernel/initrd (absolute, or in its folder);
 * with storage, the folders to make are exactly the VM's, each disk to create is the spec's
 * disk of that id, and each file is a plain name in the VM folder.
 */
async function checkSpecPaths(pools: PoolDef[], host: string, spec: VmSpec, st: Storage | undefined): Promise<void> {
  const of = `of arriving VM '${spec.name}'`;
  await assertInUsablePool(pools, host, spec.configPath, `the folder ${of}`);
  await assertInUsablePool(pools, host, spec.checkpointPath, `the checkpoint folder ${of}`);
  await assertInUsablePool(pools, host, spec.pagingPath, `the paging folder ${of}`);
  for (const c of spec.cdroms)
    await assertInUsablePool(pools, host, resolveVmFile(spec, c.path), `CD-ROM ${c.id} ${of}`);
  if (spec.boot.kind === 'kernel') {
    await assertInUsablePool(pools, host, resolveVmFile(spec, spec.boot.kernel), `the kernel ${of}`);
    if (spec.boot.initrd)
      await assertInUsablePool(pools, host, resolveVmFile(spec, spec.boot.initrd), `the initrd ${of}`);
  }
  if (!st) return;
  const folders = new Set([spec.configPath, spec.checkpointPath, spec.pagingPath].map((d) => path.resolve(d)));
  for (const dir of st.dirs)
    if (!folders.has(path.resolve(dir)) || dir.includes('\0'))
      throw new InvalidInputError(
        `Cannot receive VM '${spec.name}': folder '${dir.slice(0, 300)}' is none of its folders ` +
          `(${[...folders].join(', ')}); a move creates only those`,
        { path: dir.slice(0, 300) },
      );
  for (const d of st.disks) {
    const own = spec.disks.find((x) => x.id === d.id);
    if (!own || path.resolve(own.path) !== d.path)
      throw new InvalidInputError(
        `Cannot receive VM '${spec.name}': disk '${d.id}' at '${d.path.slice(0, 300)}' is not a disk of its spec; ` +
          'a move creates only the disks the VM has',
        { path: d.path.slice(0, 300) },
      );
  }
  const names = st.files.map((f) => fileName(spec, f.path));
  if (new Set(names).size !== names.length)
    throw new InvalidInputError(`Cannot receive VM '${spec.name}': a file is sent twice`, {});
}
