// A running VM's disks copied so that a cut copy resumes (issue 17 item 6), source side: backup
// passes with a dirty bitmap instead of a mirror (QEMU 7.2 cannot mirror and back up one disk,
// resume-copy.ts). The first pass is full (or, on a retry that finds its kept copy, only what
// the bitmap owes), catch-up passes run while the guest runs, and the last pass runs at
// switch-over with the guest paused. The bitmap is named after the move's key (VM, source,
// destination), so a plain retry of the same `move-vm` finds it; it is removed once the move
// completes or is cancelled, at the Begin of the VM's next move unless that one resumes it, or
// by the sweep once it expires (resume-bitmaps.ts). Used for shared-nothing moves of a running
// VM whose disks are qcow2 or raw and do not sit on a checkpoint chain, when `--resumable` and
// the disks' size say so (copy-choice.ts, decided once in the plan); the others keep the mirror
// (docs/moves.md). A stopped VM's writable qcow2 disks take the same passes through
// a disk daemon (stopped-copy.ts); the others keep qemu-img.
import type { IncomingRequest } from '../../api/peer-actions.js';
import { messageOf } from '../../errors.js';
import { removeBitmapHeld } from '../../qemu/img-files.js';
import { nodeNames } from '../../qemu/argv.js';
import type { QmpClient } from '../../qemu/qmp.js';
import { abandonMirrors, delNode, rootNode, sweepMirrorLeftovers, type MirrorSpec } from '../block.js';
import {
  addResumeBitmap,
  bitmapState,
  catchUpAll,
  lastPasses,
  removeResumeBitmap,
  resumeBitmapName,
  startBackup,
  waitBackups,
  type BackupSpec,
} from '../resume-copy.js';
import { decideResume, moveKeyOf, reportResumed, type ResumeOffer, type Verdict } from '../resume-marker.js';
import type { Step, StepScope } from '../runner.js';
import { MigrationFailedError, needProc, needSpec, type SourceCtx } from '../source.js';
import { addNbdTarget, DiskCopyWatch } from './disk-copy.js';
import { dropKeptCopies } from './storage-resume.js';
import { openQmpOf, readsDisks } from './stopped-copy.js';
import { dropLeftBehind, dropStoredLeftBehind, droppedLine, markBitmap, unmarkBitmap } from '../resume-bitmaps.js';

type Storage = NonNullable<IncomingRequest['storage']>;

/** Whether this move copies its disks by resumable backup passes (decided once, in the plan: copy-choice.ts). */
export function resumes(ctx: SourceCtx): boolean {
  return ctx.plan?.copy.method === 'resumable';
}

/** The passes run now: in the running VM's QEMU, or in the daemon that opened a stopped VM's disks. */
export function backupCopy(ctx: SourceCtx): boolean {
  return resumes(ctx) && readsDisks(ctx);
}

/** The QMP of what reads the disks: the VM's QEMU, or a stopped VM's storage daemon (stopped-copy.ts). */
export function copyQmp(ctx: SourceCtx): QmpClient {
  const qmp = openQmpOf(ctx);
  if (!qmp)
    throw new MigrationFailedError(
      'E_INTERNAL',
      `Cannot copy the disks of VM '${needSpec(ctx).name}': nothing has them open (its QEMU stopped)`,
    );
  return qmp;
}

/** A disk's format node: found by its device in a VM's QEMU; named after the disk in the daemon. */
const diskNode = (ctx: SourceCtx, qmp: QmpClient, diskId: string, signal: AbortSignal): Promise<string> =>
  ctx.proc ? rootNode(qmp, diskId, signal) : Promise.resolve(nodeNames({ id: diskId }).format);

const keyOf = (ctx: SourceCtx): string => moveKeyOf(needSpec(ctx).id, ctx.host.name, ctx.to.name);

/** Prepare's storage request: the key, and the disks whose bitmap can resume a kept copy. */
export async function resumableRequest(ctx: SourceCtx, st: Storage, signal: AbortSignal): Promise<Storage> {
  if (!backupCopy(ctx)) return st;
  const spec = needSpec(ctx);
  const qmp = copyQmp(ctx);
  const key = keyOf(ctx);
  const offers: ResumeOffer[] = [];
  for (const d of st.disks) {
    if (d.format !== 'qcow2' && d.format !== 'raw') continue;
    const bm = await bitmapState(qmp, await diskNode(ctx, qmp, d.id, signal), resumeBitmapName(key), { signal });
    if (bm.state !== 'ready') continue;
    offers.push({
      moveKey: key,
      vmId: spec.id,
      source: ctx.host.name,
      diskId: d.id,
      path: d.path,
      virtualSizeBytes: d.virtualSizeBytes,
      format: d.format,
    });
  }
  return { ...st, resumeKey: key, ...(offers.length ? { resume: offers } : {}) };
}

/**
 * Begin (the compare step) of any move of the VM from here: the bitmaps of cut copies this move
 * does not resume go (resume-bitmaps.ts): all of them unless it copies by backup passes, then
 * all but its own key's. Never fails the move: a bitmap left is only a cost (the sweep gets it).
 */
export async function dropEarlierBitmaps(ctx: SourceCtx, log: (m: string) => void, signal: AbortSignal): Promise<void> {
  const spec = ctx.spec;
  if (!spec) return;
  const keep = resumes(ctx) ? resumeBitmapName(keyOf(ctx)) : null;
  const why = keep
    ? `a copy to '${ctx.to.name}' resumes only its own`
    : `this move does not resume a copy (${ctx.plan ? ctx.plan.copy.method : 'its disks stay'})`;
  try {
    const dropped = ctx.proc
      ? await dropLeftBehind(ctx.proc.qmp, ctx.host.dataDir, spec.id, keep, { signal })
      : await dropStoredLeftBehind(spec.disks, ctx.host.dataDir, spec.id, keep, { pools: ctx.host.pools(), signal });
    if (dropped.length) log(droppedLine(dropped, why));
    // A storage move's cut copy on this host: no move from here resumes it any more.
    for (const f of await dropKeptCopies(ctx.host.dataDir, spec))
      log(`removed the partial copy ${f} of a cut storage move`);
  } catch (err) {
    log(`removing the bitmaps of earlier cut copies: ${messageOf(err)}`);
  }
}

export const backupStep: Step<SourceCtx> = {
  name: 'backup',
  phase: 'copying-storage',
  when: backupCopy,
  async run(ctx, s) {
    const spec = needSpec(ctx);
    const qmp = copyQmp(ctx);
    const r = ctx.job.record;
    const nbd = ctx.prep?.nbd;
    const disks = ctx.plan?.request.disks ?? [];
    if (!nbd) throw new MigrationFailedError('E_PREPARE', `Cannot move the disks of VM '${spec.name}': no NBD address`);
    const speed = r.policy.bandwidthMiBps ? r.policy.bandwidthMiBps * 1024 * 1024 : undefined;
    const bitmap = resumeBitmapName(keyOf(ctx));
    await sweepMirrorLeftovers(qmp, spec.name, s.signal);
    // Marked before it exists: a sweep (an agent restarted mid-move) never finds it without a mark.
    await markBitmap(ctx.host.dataDir, spec.id, bitmap);
    const backups: BackupSpec[] = [];
    const nodes: string[] = [];
    const verdicts = new Map<string, Verdict | null>();
    const save = (): void => s.record({ mirrors: backups, nodes });
    for (const d of disks) {
      const node = `mig-${d.id}`;
      nodes.push(node);
      save();
      await addNbdTarget(ctx, qmp, nbd, d.id, node, s.signal);
      const device = await diskNode(ctx, qmp, d.id, s.signal);
      const bm = await bitmapState(qmp, device, bitmap, { signal: s.signal });
      const answer = ctx.prep?.resume?.find((a) => a.diskId === d.id);
      // No bitmap and no kept copy: a first attempt, nothing to explain.
      const v: Verdict | null =
        !answer && bm.state === 'absent'
          ? null
          : decideResume(
              bm,
              answer?.resume
                ? { resume: true }
                : { resume: false, why: answer?.why ?? 'no partial copy was kept there' },
            );
      verdicts.set(d.id, v);
      if (!v?.resume) {
        // A full copy starts from an empty bitmap: it records the guest's writes from now on.
        if (bm.state !== 'absent') await removeResumeBitmap(qmp, device, bitmap);
        await addResumeBitmap(qmp, device, bitmap, d.format, { signal: s.signal });
      }
      backups.push({
        jobId: `mirror-${d.id}`,
        diskId: d.id,
        device,
        target: node,
        bitmap,
        sync: v?.resume ? 'bitmap' : 'full',
      });
      save();
      await startBackup(qmp, backups[backups.length - 1] as BackupSpec, speed, { signal: s.signal });
    }
    // A stopped VM's move has no memory to copy after its disks.
    const watch = new DiskCopyWatch(ctx, ctx.proc ? spec.memoryMiB * 1024 * 1024 : 0);
    const results = await waitBackups(
      qmp,
      backups,
      (js) =>
        watch.sample(
          js.map((j) => ({
            diskId: backups.find((b) => b.jobId === j.id)?.diskId ?? '',
            done: j['current-progress'],
            total: j['total-progress'],
          })),
        ),
      { signal: s.signal, timeoutMs: 6 * 3600_000 },
    ).catch((err: unknown) => watch.failed(err, spec.name));
    reportResumed(
      r.disks,
      s.log,
      disks.map((d, i) => ({
        diskId: d.id,
        copied: results[i]?.copied,
        diskBytes: d.virtualSizeBytes,
        verdict: verdicts.get(d.id) ?? null,
      })),
    );
    await catchUpAll(qmp, backups, { ...(speed ? { speedBps: speed } : {}), signal: s.signal });
    ctx.memSpan = [watch.split, 0.97];
    ctx.backups = backups;
    s.log('every disk is copied (what the guest writes from now on follows at switch-over)');
    return { mirrors: backups, nodes };
  },
  async undo(ctx, data, _s) {
    // The bitmap stays: a retry to the same host resumes from it. Not after a cancel: the
    // destination deletes its copy then (abortDestination's discard), so nothing could resume.
    const qmp = openQmpOf(ctx);
    ctx.backups = [];
    // Kept from now: it expires with the destination's kept copy (resume-bitmaps.ts).
    if (!ctx.job.signal.aborted && ctx.spec && ((data.mirrors as BackupSpec[] | undefined) ?? []).length)
      await markBitmap(ctx.host.dataDir, ctx.spec.id, resumeBitmapName(keyOf(ctx))).catch(() => undefined);
    // After an agent restart a stopped VM's daemon is not reattached: its undo stops it cleanly
    // (SIGTERM), which cancels the passes and stores the bitmap (stopped-copy.ts).
    if (!qmp) return;
    await abandonMirrors(
      qmp,
      (data.mirrors as MirrorSpec[] | undefined) ?? [],
      (data.nodes as string[] | undefined) ?? [],
    );
    if (ctx.job.signal.aborted) await dropResumeBitmaps(ctx);
  },
};

/**
 * Switch-over with the guest paused: the last pass copies what the bitmap still owes, then the
 * copy is complete and identical; the NBD nodes go. Returns the bytes it copied. The bitmap
 * stays until the move completes (dropResumeBitmaps): if the stream fails after this pass the
 * source runs on, the bitmap records its writes, and a retry resumes. Throws naming the disk.
 */
export async function lastPass(ctx: SourceCtx, s: Pick<StepScope, 'log'>): Promise<number> {
  const backups = ctx.backups ?? [];
  if (!backups.length) return 0;
  const qmp = needProc(ctx).qmp;
  const bytes = await lastPasses(qmp, backups);
  for (const b of backups) await delNode(qmp, b.target);
  ctx.backups = [];
  s.log(`the disks' last writes are copied (${(bytes / 1048576).toFixed(1)} MiB with the guest paused)`);
  return bytes;
}

/**
 * The move's bitmaps go once nothing can resume from them: the move completed (the VM runs on
 * the destination) or was cancelled. Read from the backup step's journal, so a source agent
 * restarted since finds them too. After a completed stream QEMU has stored a qcow2's bitmap in
 * the image and let go of it (the node is inactive): dropStoredBitmaps removes it there once
 * QEMU quit. Never throws.
 */
export async function dropResumeBitmaps(ctx: SourceCtx): Promise<void> {
  const qmp = openQmpOf(ctx);
  const backups = journalBackups(ctx);
  if (qmp) for (const b of backups) await removeResumeBitmap(qmp, b.device, b.bitmap);
  const vmId = ctx.spec?.id;
  if (vmId)
    for (const name of new Set(backups.map((b) => b.bitmap)))
      await unmarkBitmap(ctx.host.dataDir, vmId, name).catch(() => undefined);
}

/** A kept source image (--retain-source) of a completed move: its stored bitmap removed, QEMU gone. */
export async function dropStoredBitmaps(ctx: SourceCtx, log: (m: string) => void): Promise<void> {
  for (const b of journalBackups(ctx)) {
    const d = ctx.spec?.disks.find((x) => x.id === b.diskId);
    if (d?.format !== 'qcow2') continue;
    const held = { pools: ctx.host.pools(), what: `a disk of VM '${ctx.spec?.name ?? ''}'` };
    await removeBitmapHeld(d.path, b.bitmap, held).catch((err: unknown) => {
      // Absent is fine: QEMU never stored it (it was removed while the node was active).
      if (!/not found/i.test(messageOf(err))) log(`removing the copy's bitmap from ${d.path}: ${messageOf(err)}`);
    });
  }
}

const journalBackups = (ctx: SourceCtx): BackupSpec[] =>
  (ctx.job.journalData('backup').mirrors as BackupSpec[] | undefined) ?? [];
