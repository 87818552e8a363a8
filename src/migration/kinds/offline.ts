// A stopped VM moves to another host.
//  - Registration only (its files are on storage the destination sees):
//      queued cluster-queue → slot · preparing compare · switching-over adopt → release-source
//  - Shared nothing (its disks are copied; the steps below, used by kinds/shared-nothing.ts): the
//    destination creates the disks and serves them over NBD (its QEMU paused, the guest never
//    runs), qemu-img fills them, the destination registers the VM, the source deletes its copies.
import { peerActions } from '../../api/peer-actions.js';
import { qemuImgWithProgress } from '../../qemu/img-progress.js';
import { chainFilename, withHeldFiles } from '../../qemu/img-files.js';
import { probeImage } from '../../vm/image.js';
import { deleteVmFiles } from '../plan.js';
import { stallTimeoutMs } from '../policy.js';
import type { MoveKind, Resolution, Step, UndoScope } from '../runner.js';
import { MigrationFailedError, needSpec, stalledError, type SourceCtx } from '../source.js';
import { dropResumeBitmaps, dropStoredBitmaps, resumableRequest, resumes } from './backup-copy.js';
import { nbdTargetArgs } from './chain.js';
import { clusterQueueStep, compareStep, prepareDestination, slotStep, undoPrepare } from './common.js';
import { leftCluster } from './live.js';

/** The destination registers the VM (its files are already there). */
const adoptStep: Step<SourceCtx> = {
  name: 'adopt',
  phase: 'switching-over',
  async run(ctx) {
    const spec = needSpec(ctx);
    if (ctx.proc) {
      throw new MigrationFailedError(
        'E_VM_RUNNING',
        `Cannot move VM '${spec.name}' by registration: it was started while the move waited; move it again (live)`,
      );
    }
    ctx.job.enter('switching-over', `registering ${spec.name} on ${ctx.to.name}`);
    const out = await ctx.dest.call(
      peerActions.adopt,
      { body: { source: ctx.host.name, spec } },
      { timeoutMs: 60_000 },
    );
    ctx.job.log('the destination registered the VM');
    if (out.haNote) ctx.job.log(`${ctx.to.name}: ${out.haNote}`);
    return undefined;
  },
};

export const releaseStoppedStep: Step<SourceCtx> = {
  name: 'release-source-stopped',
  when: (ctx) => ctx.proc === null,
  phase: 'switching-over',
  async run(ctx, s) {
    await releaseStopped(ctx, s.log);
    return undefined;
  },
};

async function releaseStopped(ctx: SourceCtx, log: (m: string) => void): Promise<void> {
  const spec = needSpec(ctx);
  await ctx.host.vms.movedAway(spec.name, null);
  if (ctx.plan) {
    // A resumable copy's bitmaps: unmarked, and removed from images that stay (the daemon stored them).
    await dropResumeBitmaps(ctx);
    if (ctx.job.record.options.retainSource) {
      await dropStoredBitmaps(ctx, log);
      log('source files kept (--retain-source)');
    } else {
      await deleteVmFiles(spec, ctx.plan.files);
      log('source files deleted');
    }
  }
  await leftCluster(ctx, log);
}

/** Did the destination register the VM after all? Then the move is done; else nothing happened there. */
export async function resolveStopped(ctx: SourceCtx, _err: unknown, s: UndoScope): Promise<Resolution> {
  const spec = needSpec(ctx);
  const there = await ctx.dest.call(peerActions.vms, {}, { timeoutMs: 10_000 }).catch(() => null);
  if (there?.some((v) => v.id === spec.id)) {
    s.log(`${ctx.to.name} has registered the VM: the move is complete`);
    await releaseStopped(ctx, s.log);
    return 'completed';
  }
  return 'undo';
}

export const offlineKind: MoveKind<SourceCtx> = {
  name: 'offline',
  steps: [clusterQueueStep, slotStep, compareStep, adoptStep, releaseStoppedStep],
  resolve: resolveStopped,
};

export const prepareStoppedStep: Step<SourceCtx> = {
  name: 'prepare-stopped',
  phase: 'preparing',
  when: (ctx) => ctx.proc === null,
  async run(ctx, s) {
    const plan = ctx.plan;
    const spec = needSpec(ctx);
    if (!plan) throw new MigrationFailedError('E_INTERNAL', `Cannot copy the disks of VM '${spec.name}': no plan`);
    ctx.job.enter('preparing', `preparing ${ctx.to.name} to receive the disks`);
    if (resumes(ctx)) s.log(`disks copied by resumable backup passes: ${plan.copy.why}`);
    s.record({ incoming: ctx.job.id });
    ctx.prep = await prepareDestination(
      ctx,
      {
        jobId: ctx.job.id,
        source: ctx.host.name,
        spec: plan.destSpec,
        tls: ctx.host.settings().tls,
        postcopy: false,
        stopped: true,
        storage: await resumableRequest(ctx, plan.request, s.signal),
      },
      s.signal,
    );
    return { incoming: ctx.job.id };
  },
  async undo(ctx, _data, s) {
    await undoPrepare(ctx, s.log);
  },
};

export const copyStep: Step<SourceCtx> = {
  name: 'copy',
  phase: 'copying-storage',
  // A resumable copy runs the backup step through a disk daemon instead (stopped-copy.ts).
  when: (ctx) => ctx.proc === null && !resumes(ctx),
  async run(ctx, s) {
    const spec = needSpec(ctx);
    const r = ctx.job.record;
    const nbd = ctx.prep?.nbd;
    const disks = ctx.plan?.request.disks ?? [];
    if (!nbd) {
      throw new MigrationFailedError(
        'E_PREPARE',
        `Cannot copy the disks of VM '${spec.name}': the destination gave no NBD address`,
      );
    }
    ctx.job.enter('copying-storage', `copying ${disks.length} disk(s) to ${ctx.to.name}`);
    const total = disks.reduce((a, d) => a + d.allocatedBytes, 0) || 1;
    let before = 0;
    const t0 = Date.now();
    for (const d of disks) {
      const src = spec.disks.find((x) => x.id === d.id);
      if (!src) continue;
      const { object: tlsObject, target } = await nbdTargetArgs(ctx, nbd, d.id);
      // Read as checked: the disk's chain pinned, each file through a handle (qemu/img-files.ts).
      const pools = ctx.host.pools();
      const what = `a disk of VM '${spec.name}'`;
      const probe = { pools, host: ctx.host.name, what, format: src.format, signal: s.signal };
      const { chain } = await probeImage(src.path, probe);
      // qemu-img reports whole percents only: allow a few watchdog periods between them.
      const stallMs = 4 * stallTimeoutMs();
      await withHeldFiles(
        pools,
        chain.map((c) => c.path),
        what,
        (nameOf, fds) =>
          qemuImgWithProgress(
            [
              'convert',
              '-p',
              '-n',
              '--target-is-zero',
              ...tlsObject,
              chainFilename(chain, nameOf),
              '--target-image-opts',
              target,
            ],
            s.signal,
            stallMs,
            () => stalledError(spec.name, ctx.to.name, stallMs, 'no disk data moved'),
            (pct) => {
              const disk = r.disks.find((x) => x.id === d.id);
              if (disk) disk.bytesDone = Math.round((pct / 100) * disk.bytesTotal);
              const done = before + (pct / 100) * d.allocatedBytes;
              r.bytesTransferred = Math.round(done);
              const rate = done / Math.max(0.001, (Date.now() - t0) / 1000);
              r.rate = { transferBps: Math.round(rate), dirtyBps: 0 };
              r.progress = Math.max(r.progress, 0.02 + 0.93 * (done / total));
              r.etaSeconds = rate > 0 ? Math.round(((total - done) / rate) * 10) / 10 : null;
              ctx.job.flush();
            },
            fds,
          ),
      );
      before += d.allocatedBytes;
    }
    return undefined;
  },
};

/** The disks are there: the destination registers the VM (it stops serving them first). */
export const confirmStoppedStep: Step<SourceCtx> = {
  name: 'confirm-stopped',
  phase: 'switching-over',
  when: (ctx) => ctx.proc === null,
  async run(ctx) {
    ctx.job.enter('switching-over', `disks copied: ${ctx.to.name} registers the VM`);
    const v = await ctx.dest.call(peerActions.finish, { params: { id: ctx.job.id } }, { timeoutMs: 60_000 });
    ctx.job.destinationSteps(v.steps);
    return undefined;
  },
};
