// The source's half of a live migration with shared storage (shared/DESIGN.md §4,
// QEMU-NOTES §A): Prepare on the destination, copy memory under the convergence policy,
// stop at pre-switchover, complete, confirm (two-phase), finish. Every failure before the
// switch-over ends with the VM running on the source and the destination cleaned up.
import net from 'node:net';
import { FerryError, AbortedError, messageOf, type ErrorCode } from '../errors.js';
import type { QemuProcess } from '../qemu/process.js';
import type { MigrationInfo, MigrationStatus } from '../qemu/commands.js';
import type { AgentClient } from '../api/client.js';
import { peerActions } from '../api/peer-actions.js';
import type { VmSpec } from '../vm/spec.js';
import { run, sleep } from '../util/exec.js';
import {
  ConvergencePolicy,
  defaultFinishWithinMs,
  StallWatchdog,
  stallTimeoutMs,
  testHold,
  START_DOWNTIME_MS,
  TCG_START_DOWNTIME_MS,
} from './policy.js';
import { newProgress, sampleFrom, update } from './progress.js';
import { addTlsCreds, qemuTlsDir } from './tls.js';
import type { IncomingRequest } from '../api/peer-actions.js';
import {
  abandonMirrors,
  checkMirrors,
  delNode,
  finishMirrors,
  rootNode,
  startMirror,
  waitMirrorsReady,
  type MirrorSpec,
} from './block.js';
import { foldMirrorProgress, prepareWhenFree, type Job } from './job.js';

export interface LiveContext {
  job: Job;
  spec: VmSpec;
  proc: QemuProcess;
  dest: AgentClient;
  sourceName: string;
  tls: boolean;
  tlsFiles: { ca: string; cert: string; key: string };
  dataDir: string;
  accel: 'kvm' | 'tcg';
  /** Called once the VM runs on the destination: the source forgets it and quits QEMU. */
  onSwitched: () => Promise<void>;
  /** Shared nothing: what the destination creates and receives over NBD. */
  storage?: {
    destSpec: VmSpec;
    request: NonNullable<IncomingRequest['storage']>;
  };
}

const POLL_MS = 250;
const ACTIVE: MigrationStatus[] = ['setup', 'active', 'device', 'wait-unplug'];

export class MigrationFailedError extends FerryError {
  constructor(code: ErrorCode, message: string, cause?: unknown) {
    super(code, message, { cause });
  }
}

/** No bytes moved for the watchdog's time: most likely the migration network is down. */
export function stalledError(
  vm: string,
  dest: string,
  ms: number,
  what = 'no data moved',
  destSays = '',
): MigrationFailedError {
  // The destination knows better when it is the cause (e.g. its pool is full).
  if (destSays && !/did not answer/.test(destSays))
    return new MigrationFailedError(
      'E_MIGRATION_STALLED',
      `Cannot move VM '${vm}' to '${dest}': ${what} for ${Math.round(ms / 1000)} s${destSays}; fix that and retry`,
    );
  return new MigrationFailedError(
    'E_MIGRATION_STALLED',
    `Cannot move VM '${vm}' to '${dest}': ${what} for ${Math.round(ms / 1000)} s (the migration network may be down); check the link and retry`,
  );
}

class StallSignal extends Error {}

export async function runLive(ctx: LiveContext): Promise<void> {
  const { job, spec, proc, dest } = ctx;
  const qmp = proc.qmp;
  const r = job.record;
  const signal = job.signal;
  const policy = new ConvergencePolicy({
    maxDowntimeMs: r.policy.maxDowntimeMs,
    finishWithinMs: (r.policy.finishWithinS ?? defaultFinishWithinMs(spec.memoryMiB) / 1000) * 1000,
    ...(r.policy.bandwidthMiBps ? { bandwidthBps: r.policy.bandwidthMiBps * 1024 * 1024 } : {}),
    allowPostcopy: r.policy.allowPostcopy,
    startDowntimeMs: ctx.accel === 'tcg' ? TCG_START_DOWNTIME_MS : START_DOWNTIME_MS,
  });
  r.downtimeLimitMs = policy.downtimeMs;
  const wasRunning = (await qmp.execute('query-status', undefined, { signal })).running;
  let prepared = false;
  let migrateStarted = false;
  const tlsId = `ferry-tls-${job.id.slice(0, 8)}`;
  let tlsAdded = false;
  const mirrors: MirrorSpec[] = [];
  const nbdNodes: string[] = [];
  let prep0: { uri: string | null; nbd: { host: string; port: number } | null } | null = null;
  const memBytes = spec.memoryMiB * 1024 * 1024;
  let memSpan: [number, number] = [0.05, 0.97];
  const stallMs = stallTimeoutMs();
  const watchdog = new StallWatchdog(stallMs);

  try {
    // 2. Prepare on the destination.
    job.setState('preparing', `preparing ${r.destination}`);
    if (ctx.tls) {
      await addTlsCreds(qmp, tlsId, 'client', await qemuTlsDir(ctx.tlsFiles, ctx.dataDir), signal);
      tlsAdded = true;
    }
    const prep = await prepareWhenFree(job, dest, {
      jobId: job.id,
      source: ctx.sourceName,
      spec: (ctx.storage?.destSpec ?? spec) as unknown as Record<string, unknown>,
      tls: ctx.tls,
      postcopy: r.policy.allowPostcopy,
      ...(ctx.storage ? { storage: ctx.storage.request } : {}),
    });
    prepared = true;
    prep0 = prep;
    await testHold('preparing', (m) => job.log(m), signal);
    if (!prep.uri)
      throw new MigrationFailedError(
        'E_PREPARE',
        `Cannot move VM '${spec.name}': the destination gave no stream address`,
      );
    r.progress = 0.02;

    // 3. Copy storage (shared nothing): mirror each disk into the destination's NBD export;
    // once every mirror is READY, each guest write goes to both copies.
    if (ctx.storage) {
      if (!prep.nbd)
        throw new MigrationFailedError(
          'E_PREPARE',
          `Cannot move the disks of VM '${spec.name}': the destination gave no NBD address`,
        );
      job.setState('copying-storage', `copying ${ctx.storage.request.disks.length} disk(s) to ${r.destination}`);
      const speed = r.policy.bandwidthMiBps ? r.policy.bandwidthMiBps * 1024 * 1024 : undefined;
      // QEMU 7.2 connects an NBD node synchronously, holding its main loop: over a cut link
      // that freezes the guest for the kernel's SYN timeout (~2 min). Try the address first.
      if (!(await reachable(prep.nbd.host, prep.nbd.port, Math.min(stallMs, 10_000), signal))) {
        throw stalledError(
          spec.name,
          r.destination,
          Math.min(stallMs, 10_000),
          `no connection to its disk export at ${prep.nbd.host}:${prep.nbd.port}`,
        );
      }
      for (const d of ctx.storage.request.disks) {
        const node = `mig-${d.id}`;
        await qmp.execute(
          'blockdev-add',
          {
            driver: 'nbd',
            'node-name': node,
            export: d.id,
            'read-only': false,
            server: { type: 'inet', host: prep.nbd.host, port: String(prep.nbd.port) },
            ...(ctx.tls ? { 'tls-creds': tlsId, 'tls-hostname': prep.tlsHostname } : {}),
          },
          { signal },
        );
        nbdNodes.push(node);
        const m = { jobId: `mirror-${d.id}`, diskId: d.id, device: await rootNode(qmp, d.id, signal), target: node };
        await startMirror(qmp, m, speed, signal);
        mirrors.push(m);
      }
      const t0 = Date.now();
      let split = 0.5;
      let stalled = false;
      watchdog.reset(t0);
      await waitMirrorsReady(
        qmp,
        mirrors,
        (ps) => {
          const { done, total, rate } = foldMirrorProgress(r, ps, t0);
          if (watchdog.feed(done, Date.now())) stalled = true;
          split = 0.02 + 0.95 * (total / Math.max(1, total + memBytes));
          r.progress = Math.max(r.progress, 0.02 + (split - 0.02) * (total ? done / total : 0));
          // One ETA across the phases: the rest of the disks, then memory, at the rate seen.
          r.etaSeconds = rate > 0 ? Math.round(((total - done + memBytes) / rate) * 10) / 10 : null;
          job.flush();
          if (stalled) throw new StallSignal();
        },
        { signal, timeoutMs: 6 * 3600_000 },
      ).catch(async (err: unknown) => {
        if (!(err instanceof StallSignal)) throw err;
        const stuck = r.disks.filter((d) => d.bytesDone < d.bytesTotal).map((d) => `'${d.id}'`);
        throw stalledError(
          spec.name,
          r.destination,
          stallMs,
          stuck.length ? `no data of disk ${stuck.join(', ')} moved` : 'no disk data moved',
          await destReason(ctx),
        );
      });
      memSpan = [split, 0.97];
      job.log('every disk is mirrored (writes now go to both copies)');
    }
    const storageBytes = r.bytesTransferred;

    // 4. Copy memory.
    const caps: Array<{
      capability: 'events' | 'pause-before-switchover' | 'auto-converge' | 'postcopy-ram';
      state: boolean;
    }> = [
      { capability: 'events', state: true },
      { capability: 'pause-before-switchover', state: true },
      { capability: 'auto-converge', state: true },
      { capability: 'postcopy-ram', state: r.policy.allowPostcopy },
    ];
    await qmp.execute('migrate-set-capabilities', { capabilities: caps }, { signal });
    if (ctx.tls) {
      await qmp.execute('migrate-set-parameters', { 'tls-creds': tlsId, 'tls-hostname': prep.tlsHostname }, { signal });
    } else {
      await qmp.execute('migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '' }, { signal });
    }
    await qmp.execute('migrate-set-parameters', policy.initialParameters(), { signal });
    job.setState(
      'copying-memory',
      `copying memory to ${r.destination} (${ctx.tls ? 'TLS' : 'no TLS'}, downtime limit ${policy.downtimeMs} ms${r.policy.bandwidthMiBps ? `, ${r.policy.bandwidthMiBps} MiB/s` : ''})`,
    );
    const t0 = Date.now();
    await qmp.execute('migrate', { uri: prep.uri }, { signal });
    migrateStarted = true;
    watchdog.reset(Date.now());

    let progress = newProgress();
    let info: MigrationInfo = {};
    for (;;) {
      if (signal.aborted && job.cancellable) throw new AbortedError(`move VM '${spec.name}'`, signal.reason);
      const mark = qmp.eventMark;
      info = await qmp.execute('query-migrate', undefined, { timeoutMs: 10_000 });
      const st = info.status ?? 'none';
      // Post-copy cannot be cancelled (the destination already runs the guest): no watchdog there.
      if (job.cancellable && ACTIVE.includes(st) && watchdog.feed(info.ram?.transferred ?? 0, Date.now())) {
        throw stalledError(spec.name, r.destination, stallMs, 'no data moved', await destReason(ctx));
      }
      const s = sampleFrom(info, Date.now());
      if (s) {
        progress = update(progress, s, memSpan);
        Object.assign(r, {
          progress: Math.max(r.progress, progress.progress),
          etaSeconds: progress.etaSeconds,
          verdict: progress.verdict,
          bytesTransferred: storageBytes + s.transferredBytes,
          passes: s.pass,
          remainingBytes: s.remainingBytes,
          rate: { transferBps: Math.round(s.bandwidthBps), dirtyBps: Math.round(s.dirtyBps) },
          throttlePct: s.throttlePct,
        });
        for (const d of policy.onSample(s, progress.verdict, Date.now() - t0)) {
          if (d.kind === 'set-parameters') {
            await qmp.execute('migrate-set-parameters', d.params, { timeoutMs: 10_000 });
            r.downtimeLimitMs = policy.downtimeMs;
            job.log(d.reason);
          } else if (d.kind === 'start-postcopy') {
            job.log(d.reason);
            job.cancellable = false;
            await qmp.execute('migrate-start-postcopy', undefined, { timeoutMs: 10_000 });
          } else {
            throw new MigrationFailedError(
              'E_NOT_CONVERGING',
              `Cannot move VM '${spec.name}' to '${r.destination}': ${d.reason}`,
            );
          }
        }
        job.flush();
      }
      await checkMirrors(qmp, mirrors);
      if (st === 'pre-switchover') break;
      if (st === 'completed') break; // post-copy ends here directly
      if (st === 'postcopy-active') job.cancellable = false;
      if (st === 'failed')
        throw new MigrationFailedError(
          'E_MIGRATION_FAILED',
          `Cannot move VM '${spec.name}' to '${r.destination}': the stream failed (${info['error-desc'] ?? 'no reason given'})${await destReason(ctx)}`,
        );
      if (st === 'cancelled' || st === 'cancelling') throw new AbortedError(`move VM '${spec.name}'`);
      if (!ACTIVE.includes(st) && st !== 'postcopy-active' && st !== 'postcopy-paused' && st !== 'postcopy-recover') {
        throw new MigrationFailedError(
          'E_MIGRATION_FAILED',
          `Cannot move VM '${spec.name}': unexpected migration state '${st}'`,
        );
      }
      // Wake on the next MIGRATION event (pre-switchover must be answered at once: the
      // guest is paused there) or after the sampling interval.
      await qmp.waitEvent((ev) => ev.event === 'MIGRATION', { since: mark, timeoutMs: POLL_MS }).catch(() => undefined);
    }

    // 5. Switch over: from here on the move is not cancellable.
    job.cancellable = false;
    job.setState('switching-over', 'switching over (source paused)');
    await testHold('switching-over', (m) => job.log(m));
    if (info.status === 'pre-switchover') {
      // Completing holds QEMU's main lock while it writes the device state: over a dead link
      // that write blocks for the kernel's TCP timeout (~15 min) with the guest paused and
      // QMP silent. So check the destination still answers on the migration network first
      // (a refused connection is an answer too); the move is still cancellable here.
      const to = /^tcp:(.+):(\d+)$/.exec(prep.uri);
      if (
        to &&
        !(await reachable(to[1]!.replace(/^\[|\]$/g, ''), Number(to[2]), Math.min(stallMs, 10_000), undefined, true))
      ) {
        throw stalledError(
          spec.name,
          r.destination,
          Math.min(stallMs, 10_000),
          `'${r.destination}' did not answer on the migration network before switch-over`,
        );
      }
      if (mirrors.length) {
        // The guest is paused: finish the copies (identical now) before device state moves.
        await finishMirrors(qmp, mirrors, false);
        mirrors.length = 0;
        for (const n of nbdNodes.splice(0)) await delNode(qmp, n);
      }
      await qmp.execute('migrate-continue', { state: 'pre-switchover' }, { timeoutMs: 10_000 });
      const until = Date.now() + 60_000;
      watchdog.reset(Date.now());
      for (;;) {
        info = await qmp.execute('query-migrate', undefined, { timeoutMs: 10_000 });
        if (info.status === 'completed') break;
        // The source is paused here: give up as soon as the stream stops moving. The catch
        // below resumes the source only if QEMU did not complete (the destination cannot
        // run a VM whose stream did not end, and is told to abort).
        if (watchdog.feed(info.ram?.transferred ?? 0, Date.now()))
          throw stalledError(spec.name, r.destination, stallMs, 'no data moved during switch-over');
        if (info.status === 'failed' || info.status === 'cancelled')
          throw new MigrationFailedError(
            'E_MIGRATION_FAILED',
            `Cannot move VM '${spec.name}': the stream failed at switch-over (${info['error-desc'] ?? info.status})${await destReason(ctx)}`,
          );
        if (Date.now() > until)
          throw new MigrationFailedError(
            'E_TIMEOUT',
            `Cannot move VM '${spec.name}': switch-over did not complete within 60 s`,
          );
        await sleep(10);
      }
    }
    // 7.2 may report "completed" a moment before it fills in the times.
    for (let i = 0; i < 20 && !info['total-time']; i++) {
      await sleep(10);
      info = await qmp.execute('query-migrate', undefined, { timeoutMs: 10_000 });
    }
    r.downtimeMs = info.downtime ?? null;
    if (info.ram) {
      r.bytesTransferred = storageBytes + info.ram.transferred;
      r.passes = info.ram['dirty-sync-count'];
      r.remainingBytes = 0;
    }
    // Two-phase: the destination runs the VM only now, after the source completed.
    await confirm(ctx);
    await ctx.onSwitched();
    await qmp.execute('object-del', { id: tlsId }).catch(() => undefined);
  } catch (err) {
    // A stall, or a QEMU that stopped answering during switch-over (its completion write
    // blocked on a link that died after the check above): close the stream so QEMU fails it.
    const code = (err as FerryError).code;
    if (prep0 && (code === 'E_MIGRATION_STALLED' || (code === 'E_TIMEOUT' && r.state === 'switching-over')))
      await dropConnections(prep0);
    if (!job.cancellable && migrateStarted && (await sourceCompleted(proc))) {
      // The source completed but the confirmation failed: resolve who runs the VM.
      await resolveAfterCompleted(ctx, err);
      return;
    }
    if (!proc.hasExited) await abandonMirrors(qmp, mirrors, nbdNodes);
    await rollback(ctx, { prepared, migrateStarted, wasRunning, tlsId: tlsAdded ? tlsId : '' });
    throw err;
  }
}

/**
 * A stalled copy's TCP connections wait for the kernel's retransmission timeout (~15 min):
 * QEMU's NBD client keeps its requests (a mirror then cannot be cancelled nor its node
 * deleted) and its migration thread its write. Closing them (`ss -K`, in this agent's
 * network namespace, which its QEMUs share) makes QEMU see the failure now.
 */
async function dropConnections(prep: {
  uri: string | null;
  nbd: { host: string; port: number } | null;
}): Promise<void> {
  const to = prep.uri ? /^tcp:(.+):(\d+)$/.exec(prep.uri) : null;
  const peers = [
    ...(to ? [{ host: to[1]!.replace(/^\[|\]$/g, ''), port: Number(to[2]) }] : []),
    ...(prep.nbd ? [prep.nbd] : []),
  ];
  for (const p of peers)
    await run('ss', ['-K', 'dst', p.host, 'dport', '=', String(p.port)], { timeoutMs: 5000 }).catch(() => undefined);
}

/** Can this host open a TCP connection to host:port within `ms`? (The agent shares its QEMUs' network namespace.) */
function reachable(
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
    sock.once('connect', () => done(true));
    sock.once('timeout', () => done(false));
    sock.once('error', (e: NodeJS.ErrnoException) => done(refusedIsAnswer && e.code === 'ECONNREFUSED'));
  });
}

async function destReason(ctx: LiveContext): Promise<string> {
  try {
    const v = await ctx.dest.call(peerActions.status, { params: { id: ctx.job.id } }, { timeoutMs: 5000 });
    return v.reason ? `; on ${ctx.job.record.destination}: ${v.reason}` : '';
  } catch {
    return `; ${ctx.job.record.destination} did not answer`;
  }
}

async function sourceCompleted(proc: QemuProcess): Promise<boolean> {
  try {
    const st = await proc.qmp.execute('query-migrate', undefined, { timeoutMs: 5000 });
    return st.status === 'completed';
  } catch {
    return false;
  }
}

async function confirm(ctx: LiveContext): Promise<void> {
  await ctx.dest.call(peerActions.finish, { params: { id: ctx.job.id } }, { timeoutMs: 60_000 });
}

/**
 * The source completed but the destination did not confirm it runs the VM. Ask it; if it
 * does not know, try to run the source again: with shared images QEMU's lock refuses that
 * while the destination holds them, so the VM can never run twice.
 */
async function resolveAfterCompleted(ctx: LiveContext, err: unknown): Promise<void> {
  const { job, proc, dest } = ctx;
  // Shared nothing has no image lock to guard the source: ask the destination for longer.
  const tries = ctx.storage ? 60 : 5;
  let answered = false;
  for (let i = 0; i < tries; i++) {
    try {
      const v = await dest.call(peerActions.status, { params: { id: job.id } }, { timeoutMs: 5000 });
      answered = true;
      if (v.state === 'running') {
        job.log('the destination confirmed it runs the VM');
        await ctx.onSwitched();
        return;
      }
      if (v.state === 'prepared') {
        try {
          await confirm(ctx);
          await ctx.onSwitched();
          return;
        } catch {
          /* fall through to rollback */
        }
      }
      break; // failed or gone: the destination will not run it
    } catch {
      await sleep(1000);
    }
  }
  if (!answered && ctx.storage) {
    throw new MigrationFailedError(
      'E_SWITCHOVER',
      `Cannot confirm whether '${job.record.destination}' runs VM '${job.record.vm}' (it does not answer: ${messageOf(err)}); the VM stays paused on '${job.record.source}' so it never runs twice; once '${job.record.destination}' answers, run 'ferry vm resume ${job.record.vm}' only if it does not run there`,
      err,
    );
  }
  try {
    await proc.qmp.execute('cont', undefined, { timeoutMs: 10_000 });
    job.log('switch-over failed on the destination; the VM runs on the source again');
    await dest.call(peerActions.abort, { params: { id: job.id } }, { timeoutMs: 10_000 }).catch(() => undefined);
  } catch (contErr) {
    if (/lock/i.test(messageOf(contErr))) {
      job.log('the destination holds the disks: it runs the VM');
      await ctx.onSwitched();
      return;
    }
    throw new MigrationFailedError(
      'E_SWITCHOVER',
      `Cannot confirm where VM '${job.record.vm}' runs after switch-over: ${messageOf(err)}; the source could not resume it (${messageOf(contErr)})`,
      err,
    );
  }
  throw new MigrationFailedError(
    'E_SWITCHOVER',
    `Cannot move VM '${job.record.vm}': the destination failed at switch-over (${messageOf(err)}); the VM runs on the source again`,
    err,
  );
}

/** Abort path: cancel the stream, resume the source if we paused it, clean the destination. */
async function rollback(
  ctx: LiveContext,
  s: { prepared: boolean; migrateStarted: boolean; wasRunning: boolean; tlsId: string },
): Promise<void> {
  const { job, proc, dest } = ctx;
  const qmp = proc.qmp;
  if (s.migrateStarted && !proc.hasExited) {
    try {
      const st = await qmp.execute('query-migrate', undefined, { timeoutMs: 5000 });
      if (
        st.status &&
        !['completed', 'failed', 'cancelled', 'none'].includes(st.status) &&
        !st.status.startsWith('postcopy')
      ) {
        await qmp.execute('migrate_cancel', undefined, { timeoutMs: 10_000 });
        const until = Date.now() + 30_000;
        while (Date.now() < until) {
          const x = await qmp.execute('query-migrate', undefined, { timeoutMs: 5000 });
          if (x.status === 'cancelled' || x.status === 'failed' || x.status === 'completed') break;
          await sleep(50);
        }
      }
    } catch (err) {
      job.log(`cancelling the stream: ${messageOf(err)}`);
    }
  }
  if (!proc.hasExited && s.wasRunning) {
    try {
      const st = await qmp.execute('query-status', undefined, { timeoutMs: 5000 });
      if (!st.running) await qmp.execute('cont', undefined, { timeoutMs: 5000 });
    } catch (err) {
      job.log(`resuming the source: ${messageOf(err)}`);
    }
  }
  if (!proc.hasExited && s.tlsId)
    await qmp.execute('object-del', { id: s.tlsId }, { timeoutMs: 5000 }).catch(() => undefined);
  if (s.prepared) {
    try {
      await dest.call(peerActions.abort, { params: { id: job.id } }, { timeoutMs: 30_000 });
    } catch (err) {
      job.log(`cleaning up ${job.record.destination}: ${messageOf(err)}`);
    }
  }
}
