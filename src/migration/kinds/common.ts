// Steps several kinds of move share: waiting in the cluster's queue and for a slot, Begin
// (compare again once the move may start), and Prepare on the destination.
import { type IncomingRequest, type IncomingView } from '../../api/peer-actions.js';
import { AbortedError, FerryError } from '../../errors.js';
import { sleep } from '../../util/exec.js';
import type { z } from 'zod';
import { gather, incompatibleError } from '../begin.js';
import { sharedNothingPlan } from '../plan.js';
import { sendPrepare } from '../prepare-request.js';
import { dropEarlierBitmaps } from './backup-copy.js';
import type { Step } from '../runner.js';
import { abortDestination, type SourceCtx } from '../source.js';
import { actions } from '../../api/actions.js';
import { checkNbdAddress, checkStreamUri, checkTlsHostname, expectedTarget } from '../uri.js';

type IncomingRequestInput = z.input<typeof IncomingRequest>;

/** Moves between two nodes of this host's cluster wait in the cluster's queue until the leader admits them. */
export const clusterQueueStep: Step<SourceCtx> = {
  name: 'cluster-queue',
  phase: 'queued',
  async run(ctx, s) {
    const cluster = ctx.host.cluster();
    if (!cluster || !(await cluster.isMember(ctx.to.name).catch(() => false))) return { queued: false };
    const r = ctx.job.record;
    ctx.preflight = null;
    s.record({ queued: true });
    ctx.job.enter(
      'queued',
      `queued in cluster '${cluster.name}'${ctx.batch ? ` (${ctx.batch.replace(':', ' of ')})` : ''}`,
    );
    await cluster.enterQueue(
      {
        id: r.id,
        vm: r.vm,
        from: r.source,
        to: r.destination,
        priority: r.priority,
        ...(ctx.batch ? { batch: ctx.batch } : {}),
      },
      {
        signal: s.signal,
        onPosition: (p) => {
          r.queuePosition = p;
          ctx.job.flush(true);
        },
      },
    );
    s.log('admitted by the cluster scheduler');
    return { queued: true };
  },
  async release(ctx, data) {
    if (data.queued) await ctx.host.cluster()?.leaveQueue(ctx.job.id);
  },
};

/** One of this host's live-migration slots (outgoing and incoming count alike). */
export const slotStep: Step<SourceCtx> = {
  name: 'slot',
  phase: 'queued',
  async run(ctx, s) {
    if (!ctx.slots.tryAcquire(ctx.job.id)) {
      ctx.preflight = null;
      ctx.job.enter(
        'queued',
        `queued: ${ctx.host.name} runs ${ctx.host.settings().maxLive} live migrations (max live)`,
      );
      await ctx.slots.acquire(ctx.job.id, ctx.job.record.priority, s.signal);
    }
    return { held: true };
  },
  release(ctx) {
    ctx.slots.release(ctx.job.id);
  },
};

/**
 * Begin: compare again if the move waited (conditions may have changed while queued), else use
 * the request's pre-flight check; shared nothing: plan every file.
 */
export const compareStep: Step<SourceCtx> = {
  name: 'compare',
  phase: 'preparing',
  async run(ctx, s) {
    const r = ctx.job.record;
    ctx.job.enter('preparing', `checking ${ctx.to.name} (compare-vm)`);
    const g = ctx.preflight ?? (await gather(ctx.host, ctx.dest, r.vm, ctx.to, r.options, { signal: s.signal }));
    ctx.preflight = null;
    r.options = g.options;
    ctx.options = g.options;
    ctx.destView = g.destView;
    if (!g.report.compatible) {
      r.incompatibilities = g.report.incompatibilities;
      throw incompatibleError(r.vm, ctx.to.name, g.report);
    }
    ctx.spec = await ctx.host.vms.spec(r.vm);
    ctx.proc = ctx.host.vms.proc(r.vm);
    if (r.kind === 'shared-nothing' && g.destView) {
      const spec = ctx.spec;
      ctx.plan = await sharedNothingPlan(spec, g.options, g.destView, ctx.proc !== null);
      r.disks = ctx.plan.request.disks.map((d) => ({
        id: d.id,
        source: spec.disks.find((x) => x.id === d.id)?.path ?? '',
        destination: d.path,
        bytesDone: 0,
        bytesTotal: d.allocatedBytes,
      }));
      r.diskCopy = ctx.plan.copy.method;
      await dropEarlierBitmaps(ctx, s.log, s.signal);
      // What deleting the source's copies needs, should this host restart mid-move.
      return { files: ctx.plan.files, chain: ctx.plan.chain !== null };
    }
    await dropEarlierBitmaps(ctx, s.log, s.signal);
    return undefined;
  },
};

/** How long a move waits, at most, for a destination at its own limit (then it fails, saying so). */
function queueBudgetMs(ctx: SourceCtx): number {
  const s = ctx.job.record.policy.finishWithinS;
  return (s ?? 600) * 1000;
}

/**
 * Asks the destination to prepare. A destination at its own limit keeps the move queued; while
 * it waits the move gives back its own slot, so two hosts moving VMs to each other at their
 * limits cannot hold each other's slots forever (issue: crossing moves), and it gives up after
 * its --finish-within with a clear error.
 */
export async function prepareDestination(
  ctx: SourceCtx,
  body: IncomingRequestInput,
  signal: AbortSignal,
): Promise<IncomingView> {
  const r = ctx.job.record;
  const until = Date.now() + queueBudgetMs(ctx);
  for (let attempt = 0; ; attempt++) {
    try {
      const sentAt = performance.now();
      const v = await sendPrepare(ctx.dest, body, ctx.plan?.fileData, { signal, timeoutMs: 120_000 });
      ctx.job.destinationSteps(v.steps, sentAt);
      if (r.state === 'queued') ctx.job.enter('preparing', `preparing ${ctx.to.name}`);
      if (v.haNote) ctx.job.log(`${ctx.to.name}: ${v.haNote}`);
      await checkPrepared(ctx, v, signal);
      return v;
    } catch (err) {
      if (!(err instanceof FerryError) || err.code !== 'E_HOST_BUSY') throw err;
      if (Date.now() > until) {
        throw new FerryError(
          'E_HOST_BUSY',
          `Cannot move VM '${r.vm}' to '${ctx.to.name}': it stayed at its migration limit for ` +
            `${Math.round(queueBudgetMs(ctx) / 1000)} s; retry later or raise its limit ('ferry host ` +
            `set ${ctx.to.name} --max-live N')`,
        );
      }
      if (r.state !== 'queued') ctx.job.enter('queued', `waiting: ${ctx.to.name} is at its migration limit`);
      // Give our slot back while we wait, then take one again (jittered, so crossing moves settle).
      ctx.slots.release(r.id);
      await sleep(500 + Math.floor(Math.random() * 1000) * Math.min(4, attempt + 1), signal);
      if (signal.aborted) throw new AbortedError(`move VM '${r.vm}'`, signal.reason);
      await ctx.slots.acquire(r.id, r.priority, signal);
    }
  }
}

/**
 * What Prepare answered reaches QEMU (`migrate`, `blockdev-add`, qemu-img): only a stream and
 * NBD address where the source expects this destination to listen (src/migration/uri.ts).
 * Throwing here undoes Prepare, so the destination is aborted.
 */
export async function checkPrepared(ctx: SourceCtx, v: IncomingView, signal: AbortSignal): Promise<void> {
  const view = ctx.destView ?? (await ctx.dest.call(actions.hostShow, {}, { signal, timeoutMs: 30_000 }));
  const spec = ctx.to.name === ctx.host.name ? ctx.spec : null;
  const expect = await expectedTarget(ctx.to.name, ctx.to.endpoint, view.migration, {
    ...(spec ? { runDir: ctx.host.runDir(spec.id) } : {}),
  });
  if (v.uri !== null) checkStreamUri(v.uri, expect);
  if (v.nbd) checkNbdAddress(v.nbd, expect);
  if (v.chainNbd) checkNbdAddress(v.chainNbd, expect);
  checkTlsHostname(v.tlsHostname, expect);
}

/** The destination's abort: the undo of every Prepare (it is idempotent on the destination). */
export async function undoPrepare(ctx: SourceCtx, log: (m: string) => void): Promise<void> {
  await abortDestination(ctx, log);
}
