// A running VM moves to another host (shared/DESIGN.md §4, QEMU-NOTES §A and §B): live with
// shared storage, or shared nothing (its disks mirrored over NBD first). The steps:
//   queued          cluster-queue → slot
//   preparing       compare → tls → prepare
//   copying-storage reach-nbd → mirror                       (shared nothing)
//   copying-memory  migrate (the convergence ladder; may ask for post-copy)
//   switching-over  switchover → confirm → release-source
//   post-copy       (instead of confirm and release-source, once the ladder asked for it)
//                   postcopy: the destination runs the guest, its pages follow, the source quits
// Before switch-over a failure undoes the steps newest first: cancel the stream and resume the
// source, cancel the mirrors, the destination removes what it made. In switch-over `resolve`
// asks QEMU and the destination who runs the VM (two-phase: it never runs twice). After the
// switch to post-copy nothing is undone: a failure there loses the guest on both hosts.
import { peerActions } from '../../api/peer-actions.js';
import { AbortedError, FerryError, codeOf, messageOf } from '../../errors.js';
import type { MigrationInfo, MigrationStatus } from '../../qemu/commands.js';
import { qmpFailure, type QmpClient } from '../../qemu/qmp.js';
import { sleep } from '../../util/exec.js';
import {
  abandonMirrors,
  sweepMirrorLeftovers,
  checkMirrors,
  delNode,
  finishMirrors,
  diskRoot,
  syncOntoNew,
  startMirror,
  waitMirrorsReady,
  type MirrorSpec,
} from '../block.js';
import { deleteVmFiles } from '../plan.js';
import {
  ConvergencePolicy,
  defaultFinishWithinMs,
  StallWatchdog,
  stallTimeoutMs,
  testHold,
  START_DOWNTIME_MS,
  TCG_START_DOWNTIME_MS,
} from '../policy.js';
import { newProgress, sampleFrom, update } from '../progress.js';
import type { MoveKind, Resolution, Step, StepData, StepScope, UndoScope } from '../runner.js';
import {
  abortDestination,
  destReason,
  dropConnections,
  MigrationFailedError,
  needProc,
  needSpec,
  PostcopyLostError,
  reachable,
  sourceCompleted,
  stalledError,
  tcpTarget,
  type SourceCtx,
} from '../source.js';
import { addTlsCreds, qemuTlsDir } from '../tls.js';
import { clusterQueueStep, compareStep, prepareDestination, slotStep, undoPrepare } from './common.js';
import { copyQmp, dropResumeBitmaps, dropStoredBitmaps, lastPass, resumableRequest } from './backup-copy.js';
import { addNbdTarget, DiskCopyWatch } from './disk-copy.js';
import { openQmpOf, readsDisks } from './stopped-copy.js';

const POLL_MS = 250;

/**
 * With TLS, one memory stream is bound by one thread's encryption; QEMU's multifd spreads it over
 * several (`ferry host set --memory-streams N` on the source). Off by default: on this project's
 * 2-core TCG machine it gained nothing measurable (docs/performance.md); it is for large guests on
 * fast links. Not without TLS (one plain stream fills a link), nor with post-copy (QEMU 7.2 does
 * not combine them).
 */
export const multifdChannels = (tls: boolean, postcopy: boolean, streams: number): number =>
  tls && !postcopy && streams > 1 ? streams : 0;
const ACTIVE: MigrationStatus[] = ['setup', 'active', 'device', 'wait-unplug'];
const POSTCOPY: MigrationStatus[] = ['postcopy-active', 'postcopy-paused', 'postcopy-recover'];

export const tlsStep: Step<SourceCtx> = {
  name: 'tls',
  phase: 'preparing',
  // The VM's QEMU, or the daemon that opened a stopped VM's disks (kinds/stopped-copy.ts).
  when: (ctx) => readsDisks(ctx) && ctx.host.settings().tls,
  async run(ctx, s) {
    const id = `ferry-tls-${ctx.job.id.slice(0, 8)}`;
    s.record({ id });
    const dir = await qemuTlsDir(ctx.host.tls, ctx.host.dataDir);
    // QEMU makes it (~8 ms of its own time, loading the files) while the destination prepares:
    // the steps that name it await it first. QMP runs a monitor's commands in order, so an undo's
    // object-del still comes after it.
    const ready = addTlsCreds(copyQmp(ctx), id, 'client', dir, s.signal);
    ready.catch(() => undefined); // awaited by the steps that use it; a move that fails before them never needs it
    ctx.tlsReady = ready;
    return { id };
  },
  async undo(ctx, data, s) {
    const qmp = openQmpOf(ctx);
    if (qmp && typeof data.id === 'string') {
      await qmp.execute('object-del', { id: data.id }, { signal: s.signal, timeoutMs: 5000 }).catch(() => undefined);
    }
  },
};

export const prepareStep: Step<SourceCtx> = {
  name: 'prepare',
  phase: 'preparing',
  when: (ctx) => ctx.proc !== null || ctx.job.record.kind === 'live',
  async run(ctx, s) {
    const spec = needSpec(ctx);
    const r = ctx.job.record;
    ctx.job.enter('preparing', `preparing ${ctx.to.name}`);
    // Decided once, when the compare step planned the move (copy-choice.ts); the record has it.
    const choice = ctx.plan?.copy;
    if (choice && choice.method !== 'offline') {
      const how = choice.method === 'resumable' ? 'resumable backup passes' : 'the mirror';
      s.log(`disks copied by ${how}: ${choice.why}`);
    }
    s.record({ incoming: ctx.job.id });
    const { tls, memoryStreams } = ctx.host.settings();
    ctx.multifdChannels = multifdChannels(tls, r.policy.allowPostcopy, memoryStreams ?? 1);
    const prep = await prepareDestination(
      ctx,
      {
        jobId: ctx.job.id,
        source: ctx.host.name,
        spec: ctx.plan?.destSpec ?? spec,
        tls,
        postcopy: r.policy.allowPostcopy,
        // Sent only when used: a destination of an older version knows no such field.
        ...(ctx.multifdChannels > 0 ? { multifdChannels: ctx.multifdChannels } : {}),
        ...(ctx.plan ? { storage: await resumableRequest(ctx, ctx.plan.request, s.signal) } : {}),
      },
      s.signal,
    );
    ctx.prep = prep;
    await testHold('preparing', s.log, s.signal);
    // With a checkpoint chain the stream's address comes once the chain is there (kinds/chain.ts).
    if (!prep.uri && !prep.chainNbd) {
      throw new MigrationFailedError(
        'E_PREPARE',
        `Cannot move VM '${spec.name}': the destination gave no stream address`,
      );
    }
    r.progress = Math.max(r.progress, 0.02);
    return { incoming: ctx.job.id, uri: prep.uri, nbd: prep.nbd };
  },
  async undo(ctx, _data, s) {
    await undoPrepare(ctx, s.log);
  },
};

/** QEMU 7.2 connects an NBD node synchronously, holding its main loop: over a cut link that freezes the guest. */
export const reachNbdStep: Step<SourceCtx> = {
  name: 'reach-nbd',
  phase: 'copying-storage',
  when: (ctx) => ctx.plan !== null && ctx.proc !== null,
  async run(ctx, s) {
    const nbd = ctx.prep?.nbd;
    const spec = needSpec(ctx);
    if (!nbd) {
      throw new MigrationFailedError(
        'E_PREPARE',
        `Cannot move the disks of VM '${spec.name}': the destination gave no NBD address`,
      );
    }
    ctx.job.enter('copying-storage', `copying ${ctx.plan?.request.disks.length ?? 0} disk(s) to ${ctx.to.name}`);
    const ms = Math.min(stallTimeoutMs(), 10_000);
    if (!(await reachable(nbd.host, nbd.port, ms, s.signal))) {
      throw stalledError(spec.name, ctx.to.name, ms, `no connection to its disk export at ${nbd.host}:${nbd.port}`);
    }
    return undefined;
  },
};

export const mirrorStep: Step<SourceCtx> = {
  name: 'mirror',
  phase: 'copying-storage',
  when: (ctx) => ctx.plan?.copy.method === 'mirror' && ctx.proc !== null,
  async run(ctx, s) {
    const spec = needSpec(ctx);
    const qmp = needProc(ctx).qmp;
    const r = ctx.job.record;
    const nbd = ctx.prep?.nbd;
    const disks = ctx.plan?.request.disks ?? [];
    if (!nbd) throw new MigrationFailedError('E_PREPARE', `Cannot move the disks of VM '${spec.name}': no NBD address`);
    const speed = r.policy.bandwidthMiBps ? r.policy.bandwidthMiBps * 1024 * 1024 : undefined;
    await sweepMirrorLeftovers(qmp, spec.name, s.signal);
    const mirrors: MirrorSpec[] = [];
    const nodes: string[] = [];
    for (const d of disks) {
      const node = `mig-${d.id}`;
      nodes.push(node);
      s.record({ mirrors, nodes });
      await addNbdTarget(ctx, qmp, nbd, d.id, node, s.signal);
      const root = await diskRoot(qmp, d.id, s.signal);
      const m: MirrorSpec = {
        jobId: `mirror-${d.id}`,
        diskId: d.id,
        device: root.node,
        target: node,
        // Over a checkpoint chain already copied there: only the active layer moves. Else the
        // destination's disks step made the image just now (the mirror never writes onto a kept one).
        sync: ctx.plan?.chain?.topOnly.includes(d.id) ? 'top' : syncOntoNew(root.backingDepth, d.format),
      };
      mirrors.push(m);
      s.record({ mirrors, nodes });
      await startMirror(qmp, m, speed, s.signal);
    }
    const watch = new DiskCopyWatch(ctx, spec.memoryMiB * 1024 * 1024);
    await waitMirrorsReady(qmp, mirrors, (ps) => watch.sample(ps), { signal: s.signal, timeoutMs: 6 * 3600_000 }).catch(
      (err: unknown) => watch.failed(err, spec.name),
    );
    ctx.memSpan = [watch.split, 0.97];
    ctx.mirrors = mirrors;
    s.log('every disk is mirrored (writes now go to both copies)');
    return { mirrors, nodes };
  },
  async undo(ctx, data, _s) {
    const proc = ctx.proc;
    if (!proc || proc.hasExited) return;
    await abandonMirrors(
      proc.qmp,
      (data.mirrors as MirrorSpec[] | undefined) ?? [],
      (data.nodes as string[] | undefined) ?? [],
    );
  },
};

export const migrateStep: Step<SourceCtx> = {
  name: 'migrate',
  when: (ctx) => ctx.proc !== null || ctx.job.record.kind === 'live',
  phase: 'copying-memory',
  async run(ctx, s) {
    const spec = needSpec(ctx);
    const proc = needProc(ctx);
    const qmp = proc.qmp;
    const r = ctx.job.record;
    const prep = ctx.prep;
    if (!prep?.uri) throw new MigrationFailedError('E_PREPARE', `Cannot move VM '${spec.name}': no stream address`);
    const tls = ctx.host.settings().tls;
    const tlsId = `ferry-tls-${ctx.job.id.slice(0, 8)}`;
    await ctx.tlsReady;
    const wasRunning = (await qmp.execute('query-status', undefined, { signal: s.signal })).running;
    s.record({ wasRunning, started: false });
    const policy = new ConvergencePolicy({
      maxDowntimeMs: r.policy.maxDowntimeMs,
      finishWithinMs: (r.policy.finishWithinS ?? defaultFinishWithinMs(spec.memoryMiB) / 1000) * 1000,
      ...(r.policy.bandwidthMiBps ? { bandwidthBps: r.policy.bandwidthMiBps * 1024 * 1024 } : {}),
      allowPostcopy: r.policy.allowPostcopy,
      startDowntimeMs: ctx.host.accelerator() === 'tcg' ? TCG_START_DOWNTIME_MS : START_DOWNTIME_MS,
    });
    r.downtimeLimitMs = policy.downtimeMs;
    await endLeftoverStream(qmp, s, spec.name);
    // As the destination was prepared.
    const channels = ctx.multifdChannels ?? 0;
    await qmp.execute(
      'migrate-set-capabilities',
      {
        capabilities: [
          { capability: 'events', state: true },
          { capability: 'pause-before-switchover', state: true },
          { capability: 'auto-converge', state: true },
          { capability: 'postcopy-ram', state: r.policy.allowPostcopy },
          { capability: 'multifd', state: channels > 0 },
        ],
      },
      { signal: s.signal },
    );
    if (channels > 0)
      await qmp.execute('migrate-set-parameters', { 'multifd-channels': channels }, { signal: s.signal });
    await qmp.execute(
      'migrate-set-parameters',
      tls ? { 'tls-creds': tlsId, 'tls-hostname': prep.tlsHostname } : { 'tls-creds': '', 'tls-hostname': '' },
      { signal: s.signal },
    );
    await qmp.execute('migrate-set-parameters', policy.initialParameters(), { signal: s.signal });
    const bw = r.policy.bandwidthMiBps ? `, ${r.policy.bandwidthMiBps} MiB/s` : '';
    ctx.job.enter(
      'copying-memory',
      `copying memory to ${ctx.to.name} (${tls ? 'TLS' : 'no TLS'}${channels > 0 ? `, ${channels} streams` : ''}, ` +
        `downtime limit ${policy.downtimeMs} ms${bw})`,
    );
    const storageBytes = r.bytesTransferred;
    const memSpan = ctx.memSpan;
    const stallMs = stallTimeoutMs();
    const watchdog = new StallWatchdog(stallMs);
    const t0 = Date.now();
    s.record({ wasRunning, started: true });
    await qmp.execute('migrate', { uri: prep.uri }, { signal: s.signal });
    watchdog.reset(Date.now());
    const mirrors = ctx.mirrors;
    let progress = newProgress();
    for (;;) {
      // A cancel is honoured only where the phase table allows it (not in post-copy).
      if (s.signal.aborted && ctx.job.cancellable) throw new AbortedError(`move VM '${spec.name}'`, s.signal.reason);
      const mark = qmp.eventMark;
      const info: MigrationInfo = await qmp.execute('query-migrate', undefined, { timeoutMs: 10_000 });
      const st = info.status ?? 'none';
      // Post-copy cannot be cancelled (the destination already runs the guest): no watchdog there.
      if (ACTIVE.includes(st) && watchdog.feed(info.ram?.transferred ?? 0, Date.now())) {
        throw stalledError(spec.name, ctx.to.name, stallMs, 'no data moved', await destReason(ctx));
      }
      const sample = sampleFrom(info, Date.now());
      if (sample) {
        progress = update(progress, sample, memSpan);
        Object.assign(r, {
          progress: Math.max(r.progress, progress.progress),
          etaSeconds: progress.etaSeconds,
          verdict: progress.verdict,
          bytesTransferred: storageBytes + sample.transferredBytes,
          passes: sample.pass,
          remainingBytes: sample.remainingBytes,
          rate: { transferBps: Math.round(sample.bandwidthBps), dirtyBps: Math.round(sample.dirtyBps) },
          throttlePct: sample.throttlePct,
        });
        for (const d of policy.onSample(sample, progress.verdict, Date.now() - t0)) {
          if (d.kind === 'set-parameters') {
            await qmp.execute('migrate-set-parameters', d.params, { timeoutMs: 10_000 });
            r.downtimeLimitMs = policy.downtimeMs;
            s.log(d.reason);
          } else if (d.kind === 'start-postcopy') {
            // QEMU stops the guest at the end of this pass and waits at pre-switchover: up to
            // there it can still be undone like a pre-copy (the switchover step commits).
            s.log(d.reason);
            ctx.postcopy = { askedAtMs: Date.now(), afterMs: Date.now() - t0, eventMark: qmp.eventMark };
            await qmp.execute('migrate-start-postcopy', undefined, { timeoutMs: 10_000 });
          } else {
            throw new MigrationFailedError(
              'E_NOT_CONVERGING',
              `Cannot move VM '${spec.name}' to '${ctx.to.name}': ${d.reason}`,
            );
          }
        }
        ctx.job.flush();
      }
      await checkMirrors(qmp, mirrors);
      if (st === 'pre-switchover' || st === 'completed' || POSTCOPY.includes(st)) {
        if (channels > 0) {
          const mib = (b: number | undefined): string => ((b ?? 0) / 1024 / 1024).toFixed(1);
          s.log(
            `memory: ${mib(info.ram?.transferred)} MiB sent, ${mib(info.ram?.['multifd-bytes'])} MiB of it over ` +
              `the ${channels} multifd streams`,
          );
        }
        return { wasRunning, started: true, status: st };
      }
      if (st === 'failed') {
        throw new MigrationFailedError(
          'E_MIGRATION_FAILED',
          `Cannot move VM '${spec.name}' to '${ctx.to.name}': the stream failed ` +
            `(${info['error-desc'] ?? 'no reason given'})${await destReason(ctx)}`,
        );
      }
      if (st === 'cancelled' || st === 'cancelling') throw new AbortedError(`move VM '${spec.name}'`);
      if (!ACTIVE.includes(st) && !POSTCOPY.includes(st)) {
        throw new MigrationFailedError(
          'E_MIGRATION_FAILED',
          `Cannot move VM '${spec.name}': unexpected migration state '${st}'`,
        );
      }
      // Wake on the next MIGRATION event (pre-switchover must be answered at once: the
      // guest is paused there) or after the sampling interval.
      await qmp.waitEvent((ev) => ev.event === 'MIGRATION', { since: mark, timeoutMs: POLL_MS }).catch(() => undefined);
    }
  },
  async undo(ctx, data, s) {
    const proc = ctx.proc;
    if (!proc || proc.hasExited) return;
    const qmp = proc.qmp;
    if (data.started) await cancelStream(ctx, s);
    if (data.wasRunning !== false) {
      try {
        const mig = await qmp.execute('query-migrate', undefined, { timeoutMs: 5000 });
        if (POSTCOPY.includes(mig.status ?? 'none')) {
          s.log('the source is in post-copy: its guest is not resumed (its memory is split between the hosts)');
          return;
        }
        const st = await qmp.execute('query-status', undefined, { timeoutMs: 5000 });
        if (!st.running) await qmp.execute('cont', undefined, { timeoutMs: 5000 });
      } catch (err) {
        s.log(`resuming the source: ${messageOf(err)}`);
      }
    }
  },
};

/**
 * An earlier move's stream that is still ending (its cancel waits on a dead link) would make QEMU
 * refuse this one ("a migration process in progress"): shut it down first, or say why not.
 */
async function endLeftoverStream(qmp: QmpClient, s: StepScope, vm: string): Promise<void> {
  if (await streamGone(qmp)) return;
  const st = (await qmp.execute('query-migrate', undefined, { signal: s.signal })).status ?? 'none';
  if (POSTCOPY.includes(st) || st === 'pre-switchover' || st === 'device')
    throw new MigrationFailedError(
      'E_MIGRATION_FAILED',
      `Cannot move VM '${vm}': an earlier move of it is still in '${st}'; see 'ferry migration list'`,
    );
  s.log(`an earlier stream of this VM is still '${st}': ending it`);
  if (!ENDED.includes(st) && st !== 'cancelling') await qmp.execute('migrate_cancel', undefined, { signal: s.signal });
  // A connection QEMU was still opening over a cut link is not yet one `yank` can shut down: it ends
  // at TCP's next retransmission once the link is back, which backs off to tens of seconds.
  if (!(await streamEnds(qmp, s, LEFTOVER_WAIT_MS)))
    throw new MigrationFailedError(
      'E_MIGRATION_FAILED',
      `Cannot move VM '${vm}': an earlier move's stream has not ended after ${LEFTOVER_WAIT_MS / 1000} s ` +
        `(its link may still be down); check the migration network, then retry`,
    );
}

/** migrate_cancel and wait until QEMU says the stream ended (not in post-copy: QEMU would lose the guest). */
async function cancelStream(ctx: SourceCtx, s: UndoScope): Promise<void> {
  const qmp = ctx.proc?.qmp;
  if (!qmp) return;
  try {
    const st = await qmp.execute('query-migrate', undefined, { timeoutMs: 5000 });
    const status = st.status ?? 'none';
    if (POSTCOPY.includes(status) || (await streamGone(qmp))) return;
    if (!ENDED.includes(status)) await qmp.execute('migrate_cancel', undefined, { timeoutMs: 10_000 });
    if (!(await streamEnds(qmp, s, 30_000))) s.log('the stream had not ended 30 s after the cancel');
  } catch (err) {
    s.log(`cancelling the stream: ${messageOf(err)}`);
  }
}

const ENDED: MigrationStatus[] = ['completed', 'failed', 'cancelled', 'none'];

/** The last stream ended and was cleaned up: a new one can start. */
async function streamGone(qmp: QmpClient): Promise<boolean> {
  const x = await qmp.execute('query-migrate', undefined, { timeoutMs: 5000 });
  if (!ENDED.includes(x.status ?? 'none')) return false;
  const yank = await qmp.execute('query-yank', undefined, { timeoutMs: 5000 });
  return !yank.some((i) => i.type === 'migration');
}
/** How long a new move waits for an earlier move's stream to end before it gives up. */
const LEFTOVER_WAIT_MS = 90_000;
/** How long a cancelled stream may take to end before its connections are shut down. */
const YANK_AFTER_MS = 3000;

/**
 * Waits until the stream has ended and QEMU cleaned it up (its yank instance is gone), at most
 * `ms`. A stream blocked in a write over a dead link ignores migrate_cancel until TCP gives up
 * (minutes): multifd's channels each hold a thread so blocked, and the clean-up waits for them,
 * after the status already says failed or cancelled; the VM's next move is refused meanwhile ("a
 * migration process in progress", "duplicate yank instance"). After YANK_AFTER_MS its
 * connections are shut down (QMP `yank`), which ends it.
 */
async function streamEnds(qmp: QmpClient, s: { log: (m: string) => void }, ms: number): Promise<boolean> {
  const t0 = Date.now();
  let yanked = false;
  while (Date.now() - t0 < ms) {
    if (await streamGone(qmp)) return true;
    if (!yanked && Date.now() - t0 >= YANK_AFTER_MS) {
      yanked = true;
      await qmp
        .execute('yank', { instances: [{ type: 'migration' }] }, { timeoutMs: 5000 })
        .then(() =>
          s.log(`the stream had not ended ${YANK_AFTER_MS} ms after the cancel: its connections were shut down`),
        )
        .catch((err: unknown) => s.log(`shutting the stream's connections down: ${messageOf(err)}`));
    }
    await sleep(50);
  }
  return false;
}

/** Switch over: the source is paused at pre-switchover; finish the disks, complete the stream. */
export const switchoverStep: Step<SourceCtx> = {
  name: 'switchover',
  when: (ctx) => ctx.proc !== null || ctx.job.record.kind === 'live',
  phase: 'switching-over',
  async run(ctx, s) {
    const spec = needSpec(ctx);
    const proc = needProc(ctx);
    const qmp = proc.qmp;
    const r = ctx.job.record;
    ctx.job.enter('switching-over', 'switching over (source paused)');
    await testHold('switching-over', s.log);
    let info = await qmp.execute('query-migrate', undefined, { timeoutMs: 10_000 });
    const stallMs = stallTimeoutMs();
    if (ctx.postcopy && POSTCOPY.includes(info.status ?? 'none')) {
      ctx.job.enter('post-copy', 'post-copy: the guest moves to the destination, its pages follow');
      return undefined;
    }
    if (info.status === 'pre-switchover') {
      // Completing holds QEMU's main lock while it writes the device state: over a dead link
      // that write blocks for the kernel's TCP timeout with the guest paused and QMP silent.
      // So check the destination still answers on the migration network first (a refused
      // connection is an answer too); QEMU has not completed, so a failure here is undone.
      const to = tcpTarget(ctx.prep?.uri ?? null);
      const ms = Math.min(stallMs, 10_000);
      if (to && !(await reachable(to.host, to.port, ms, undefined, true))) {
        throw stalledError(
          spec.name,
          ctx.to.name,
          ms,
          `'${ctx.to.name}' did not answer on the migration network before switch-over`,
        );
      }
      // What QEMU sends from here on goes with the guest paused: the downtime is made of it.
      const ramAtPause = info.ram?.transferred ?? null;
      const mirrors = ctx.mirrors;
      let mirrorBytes = 0;
      if (mirrors.length) {
        // The guest is paused: finish the copies (identical now) before device state moves.
        mirrorBytes = await finishMirrors(qmp, mirrors, false);
        ctx.mirrors = [];
        for (const m of mirrors) await delNode(qmp, m.target);
      }
      const diskBytes = mirrorBytes + (await lastPass(ctx, s));
      await qmp.execute('migrate-continue', { state: 'pre-switchover' }, { timeoutMs: 10_000 });
      if (ctx.postcopy) {
        // The point of no return: QEMU sends the device state and the destination may run it.
        ctx.job.enter('post-copy', 'post-copy: the guest moves to the destination, its pages follow');
        return undefined;
      }
      const until = Date.now() + 60_000;
      const watchdog = new StallWatchdog(stallMs);
      watchdog.reset(Date.now());
      for (;;) {
        const mark = qmp.eventMark;
        info = await qmp.execute('query-migrate', undefined, { timeoutMs: 10_000 });
        if (info.status === 'completed') {
          r.pausedBytes = ramAtPause !== null && info.ram ? info.ram.transferred - ramAtPause + diskBytes : null;
          break;
        }
        // The source is paused here: give up as soon as the stream stops moving; `resolve`
        // resumes the source only if QEMU did not complete.
        if (watchdog.feed(info.ram?.transferred ?? 0, Date.now())) {
          throw stalledError(spec.name, ctx.to.name, stallMs, 'no data moved during switch-over');
        }
        if (info.status === 'failed' || info.status === 'cancelled') {
          throw new MigrationFailedError(
            'E_MIGRATION_FAILED',
            `Cannot move VM '${spec.name}': the stream failed at switch-over ` +
              `(${info['error-desc'] ?? info.status})${await destReason(ctx)}`,
          );
        }
        if (Date.now() > until) {
          throw new MigrationFailedError(
            'E_TIMEOUT',
            `Cannot move VM '${spec.name}': switch-over did not complete within 60 s`,
          );
        }
        // Wake on QEMU's next MIGRATION event (device → completed), or sample again for the watchdog.
        await qmp
          .waitEvent((ev) => ev.event === 'MIGRATION', { since: mark, timeoutMs: POLL_MS })
          .catch(() => undefined);
      }
    }
    recordStats(r, info);
    return undefined;
  },
};

/** Downtime, bytes and passes from QEMU's completed stats (missing ones are read again after confirm). */
function recordStats(r: SourceCtx['job']['record'], info: MigrationInfo): void {
  r.downtimeMs = info['total-time'] ? (info.downtime ?? null) : null;
  if (info.ram) {
    r.bytesTransferred = storageBytesOf(r) + info.ram.transferred;
    r.passes = info.ram['dirty-sync-count'];
    r.remainingBytes = 0;
    r.memoryPages = { dataBytes: info.ram['normal-bytes'], zeroPages: info.ram.duplicate };
  }
}

/**
 * QEMU 7.2 may report "completed" a moment before it fills in the times: read them again
 * once the guest runs on the destination, not while it waits for them.
 */
async function completeStats(ctx: SourceCtx): Promise<void> {
  const r = ctx.job.record;
  const qmp = ctx.proc?.qmp;
  if (r.downtimeMs !== null || !qmp || ctx.proc?.hasExited) return;
  for (let i = 0; i < 20; i++) {
    const info = await qmp.execute('query-migrate', undefined, { timeoutMs: 5000 }).catch(() => null);
    if (!info || info.status !== 'completed') return;
    if (info['total-time']) {
      recordStats(r, info);
      return;
    }
    await sleep(10);
  }
}

function storageBytesOf(r: SourceCtx['job']['record']): number {
  return r.disks.reduce((a, d) => a + d.bytesDone, 0);
}

/** Two-phase: the destination runs the VM only now, after the source completed. */
export const confirmStep: Step<SourceCtx> = {
  name: 'confirm',
  when: (ctx) => (ctx.proc !== null || ctx.job.record.kind === 'live') && ctx.job.record.state !== 'post-copy',
  phase: 'switching-over',
  async run(ctx) {
    const v = await ctx.dest.call(peerActions.finish, { params: { id: ctx.job.id } }, { timeoutMs: 60_000 });
    ctx.job.destinationSteps(v.steps);
    return undefined;
  },
};

export const releaseSourceStep: Step<SourceCtx> = {
  name: 'release-source',
  when: (ctx) => (ctx.proc !== null || ctx.job.record.kind === 'live') && ctx.job.record.state !== 'post-copy',
  phase: 'switching-over',
  async run(ctx, s) {
    await completeStats(ctx);
    await finishOnSource(ctx, s.log);
    return undefined;
  },
};

/**
 * Post-copy after the switch: the destination's QEMU (started with -S) stays paused after
 * the switch until told to run, so tell it as soon as the source says the device state went
 * (postcopy-active); then the source serves the pages the guest asks for and pushes the rest
 * until QEMU completes, and quits. No time cap and no cancel: there is nothing to go back to.
 * A failure here is reported as PostcopyLostError and the source is never resumed.
 */
export const postcopyStep: Step<SourceCtx> = {
  name: 'postcopy',
  when: (ctx) => ctx.postcopy !== undefined && ctx.job.record.state === 'post-copy',
  phase: 'post-copy',
  async run(ctx, s) {
    const spec = needSpec(ctx);
    const qmp = needProc(ctx).qmp;
    const r = ctx.job.record;
    const asked = ctx.postcopy;
    if (!asked) throw new MigrationFailedError('E_INTERNAL', `Cannot move VM '${spec.name}': post-copy was not asked`);
    // The guest stopped on the source at QEMU's STOP event (its clock is this host's).
    const stop = qmp.history.find((e) => e.index >= asked.eventMark && e.event === 'STOP')?.timestamp;
    const stoppedAtMs = stop ? stop.seconds * 1000 + Math.round(stop.microseconds / 1000) : asked.askedAtMs;
    const pc = {
      switchedAt: new Date(stoppedAtMs).toISOString(),
      afterMs: asked.afterMs,
      downtimeMs: null as number | null,
      guestPauseMs: null as number | null,
      bytes: null as number | null,
      durationMs: null as number | null,
      lost: false,
    };
    r.postcopy = pc;
    ctx.job.flush();
    let running = false;
    let finishAsked = false;
    // Lost: the guest cannot run anywhere, but the VM must stay registered on exactly one host,
    // the one whose disks are current: the destination once the guest ran there (it wrote to
    // them), else this host (its guest stopped at the switch). The other side lets it go.
    const lost = async (why: string, cause?: unknown): Promise<PostcopyLostError> => {
      pc.lost = true;
      ctx.job.flush();
      let unsure = false;
      if (!running) {
        const v = await ctx.dest
          .call(peerActions.status, { params: { id: ctx.job.id } }, { timeoutMs: 5000 })
          .catch(() => null);
        running = v?.state === 'running';
        // No answer after finish was asked: the destination may run it (an abort is refused there then).
        unsure = v === null && finishAsked;
      }
      if (running) {
        await finishOnSource(ctx, s.log).catch((e: unknown) => s.log(`letting the VM go here: ${messageOf(e)}`));
      } else {
        await abortDestination(ctx, s.log);
      }
      const home = running ? ctx.to.name : ctx.host.name;
      const caveat = unsure ? `'${ctx.to.name}' did not answer: check it does not run it first` : '';
      s.log(`post-copy lost: VM '${spec.name}' stays registered on ${home}`);
      return new PostcopyLostError(spec.name, ctx.host.name, ctx.to.name, home, why, cause, caveat);
    };
    const stallMs = stallTimeoutMs();
    const watchdog = new StallWatchdog(stallMs);
    watchdog.reset(Date.now());
    let info: MigrationInfo;
    for (;;) {
      const mark = qmp.eventMark;
      try {
        info = await qmp.execute('query-migrate', undefined, { timeoutMs: 10_000 });
      } catch (err) {
        throw await lost(`the source QEMU stopped answering (${messageOf(err)})`, err);
      }
      const st = info.status ?? 'none';
      if (st === 'failed' || st === 'cancelled' || st === 'postcopy-paused' || st === 'postcopy-recover') {
        throw await lost(`the stream failed (${info['error-desc'] ?? st})${await destReason(ctx)}`);
      }
      if (!running && (st === 'postcopy-active' || st === 'completed')) {
        finishAsked = true;
        try {
          const v = await ctx.dest.call(peerActions.finish, { params: { id: ctx.job.id } }, { timeoutMs: 60_000 });
          ctx.job.destinationSteps(v.steps);
        } catch (err) {
          throw await lost(`'${ctx.to.name}' could not run it (${messageOf(err)})`, err);
        }
        running = true;
        pc.guestPauseMs = Date.now() - stoppedAtMs;
        s.log(`the guest runs on ${ctx.to.name} (paused ${pc.guestPauseMs} ms in all); its remaining pages follow`);
        ctx.job.flush();
      }
      if (st === 'completed') break;
      if (watchdog.feed(info.ram?.transferred ?? 0, Date.now())) {
        throw await lost(`no data moved for ${Math.round(stallMs / 1000)} s${await destReason(ctx)}`);
      }
      if (info.ram) {
        r.bytesTransferred = storageBytesOf(r) + info.ram.transferred;
        r.remainingBytes = info.ram.remaining;
        ctx.job.flush();
      }
      await qmp.waitEvent((ev) => ev.event === 'MIGRATION', { since: mark, timeoutMs: POLL_MS }).catch(() => undefined);
    }
    pc.durationMs = Date.now() - stoppedAtMs;
    recordStats(r, info);
    await completeStats(ctx);
    pc.downtimeMs = r.downtimeMs;
    pc.bytes = info.ram?.['postcopy-bytes'] ?? null;
    ctx.job.flush();
    await finishOnSource(ctx, s.log);
    return undefined;
  },
};

/** The VM runs on the destination: quit our QEMU, forget the VM, delete copies we no longer need. */
async function finishOnSource(ctx: SourceCtx, log: (m: string) => void): Promise<void> {
  const spec = needSpec(ctx);
  const r = ctx.job.record;
  await dropResumeBitmaps(ctx);
  await ctx.host.vms.movedAway(r.vm, ctx.proc);
  if (ctx.plan) {
    if (r.options.retainSource) {
      await dropStoredBitmaps(ctx, log);
      log('source files kept (--retain-source)');
    } else {
      await deleteVmFiles(spec, ctx.plan.files);
      log('source files deleted');
    }
  }
  await leftCluster(ctx, log);
}

/** A clustered VM moved to a host outside the cluster leaves it (no leader restarts it from the old record). */
export async function leftCluster(ctx: SourceCtx, log: (m: string) => void): Promise<void> {
  const cluster = ctx.host.cluster();
  if (!ctx.spec?.ha || !cluster) return;
  if (await cluster.isMember(ctx.to.name).catch(() => true)) return;
  await cluster.forgetVm(ctx.spec.name).catch(() => undefined);
  log(
    `${ctx.spec.name} left cluster '${cluster.name}': ${ctx.to.name} is not a member; its HA record was deleted ` +
      'and it is not HA there (ha: false)',
  );
}

/**
 * The destination says the cluster gave the VM to a third node: true only when the cluster's
 * record, read here, says so too. A destination that says it falsely (a hostile or confused
 * peer) gets the usual resolution: the source runs the VM again when the destination does not.
 * Without an answer from etcd neither can be known: the VM stays paused here, and this says so.
 */
export async function ownedElsewhere(ctx: SourceCtx, err: unknown): Promise<boolean> {
  const cluster = ctx.host.cluster();
  const spec = ctx.spec;
  if (!cluster || !spec?.ha) return false;
  try {
    await cluster.mayBoot(spec);
    return false;
  } catch (check) {
    if (codeOf(check) === 'E_HA_OWNED_ELSEWHERE') return true;
    const r = ctx.job.record;
    throw new MigrationFailedError(
      'E_SWITCHOVER',
      `Cannot move VM '${r.vm}': '${r.destination}' says the cluster restarted it on another node ` +
        `(${messageOf(err)}), and the cluster's record cannot be read here (${messageOf(check)}); the VM ` +
        `stays paused on '${r.source}' so it never runs twice; see 'ferry cluster status', and run ` +
        `'ferry vm resume ${r.vm}' only if no other node runs it`,
      err,
    );
  }
}

/**
 * A failure in switch-over. If the source's QEMU did not complete, the destination cannot run
 * an unfinished stream: undo (resume the source). If it completed, ask the destination; if it
 * does not know, try to run the source again: with shared images QEMU's lock refuses that while
 * the destination holds them, so the VM can never run twice. Shared nothing has no image lock
 * to guard it: without an answer the VM stays paused and the record says what to check.
 */
export async function resolveLive(ctx: SourceCtx, err: unknown, s: UndoScope): Promise<Resolution> {
  const code = codeOf(err);
  if (code === 'E_MIGRATION_STALLED' || code === 'E_TIMEOUT') await dropConnections(ctx.prep);
  if (!(await sourceCompleted(ctx.proc))) return 'undo';
  const r = ctx.job.record;
  if (code === 'E_HA_OWNED_ELSEWHERE' && (await ownedElsewhere(ctx, err))) {
    // A leader restarted the HA VM on a third node while it moved (this host was found down):
    // it runs there, from its disks. Neither side may run it: the destination drops its QEMU,
    // this host stops its own and keeps the VM registered, stopped (its start is refused while
    // the record names the other node; this host forgets it when it rejoins the cluster).
    await abortDestination(ctx, s.log);
    await ctx.proc?.quit({ timeoutMs: 10_000 });
    s.log(`the cluster runs ${r.vm} on another node now: it was stopped here and dropped on ${r.destination}`);
    throw new MigrationFailedError(
      'E_HA_OWNED_ELSEWHERE',
      `Cannot move VM '${r.vm}': while it moved, the cluster restarted it on another node (${messageOf(err)}); ` +
        `it runs there now, and neither '${r.source}' nor '${r.destination}' runs it; see 'ferry cluster status'`,
      err,
    );
  }
  const tries = ctx.plan ? 60 : 5;
  let answered = false;
  for (let i = 0; i < tries; i++) {
    try {
      const v = await ctx.dest.call(peerActions.status, { params: { id: ctx.job.id } }, { timeoutMs: 5000 });
      answered = true;
      if (v.state === 'running') {
        s.log('the destination confirmed it runs the VM');
        await finishOnSource(ctx, s.log);
        return 'completed';
      }
      if (v.state === 'prepared') {
        try {
          await confirmStep.run(ctx, { signal: s.signal, log: s.log, record: () => undefined });
          await finishOnSource(ctx, s.log);
          return 'completed';
        } catch {
          /* the destination cannot run it: resume the source below */
        }
      }
      break; // failed or gone: the destination will not run it
    } catch {
      await sleep(1000);
    }
  }
  if (!answered && ctx.plan) {
    throw new MigrationFailedError(
      'E_SWITCHOVER',
      `Cannot confirm whether '${r.destination}' runs VM '${r.vm}' (it does not answer: ${messageOf(err)}); ` +
        `the VM stays paused on '${r.source}' so it never runs twice; once '${r.destination}' answers, ` +
        `run 'ferry vm resume ${r.vm}' only if it does not run there`,
      err,
    );
  }
  const proc = ctx.proc;
  try {
    if (!proc) throw new FerryError('E_QEMU_GONE', 'the source QEMU is gone');
    await proc.qmp.execute('cont', undefined, { timeoutMs: 10_000 });
    s.log('switch-over failed on the destination; the VM runs on the source again');
    await abortDestination(ctx, s.log);
  } catch (contErr) {
    if (qmpFailure(contErr) === 'image-locked') {
      s.log('the destination holds the disks: it runs the VM');
      await finishOnSource(ctx, s.log);
      return 'completed';
    }
    throw new MigrationFailedError(
      'E_SWITCHOVER',
      `Cannot confirm where VM '${r.vm}' runs after switch-over: ${messageOf(err)}; ` +
        `the source could not resume it (${messageOf(contErr)})`,
      err,
    );
  }
  throw new MigrationFailedError(
    'E_SWITCHOVER',
    `Cannot move VM '${r.vm}': the destination failed at switch-over (${messageOf(err)}); the VM runs ` +
      'on the source again',
    err,
  );
}

export const liveKind: MoveKind<SourceCtx> = {
  name: 'live',
  steps: [
    clusterQueueStep,
    slotStep,
    compareStep,
    tlsStep,
    prepareStep,
    reachNbdStep,
    mirrorStep,
    migrateStep,
    switchoverStep,
    postcopyStep,
    confirmStep,
    releaseSourceStep,
  ],
  resolve: resolveLive,
};

export type { StepData };
