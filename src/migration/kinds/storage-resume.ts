// A storage move's resumable copy (issue 17 item 6): a VM's disks copied to their new place by
// backup passes with a dirty bitmap (as a shared-nothing move's, backup-copy.ts; a stopped VM's
// through a disk daemon, stopped-copy.ts, with no pause and no switch)
// instead of a mirror or qemu-img, so a copy cut mid-way (the agent restarted, the pool filled
// up, an I/O error) is resumed by a retry of the same `move-storage`: only what the bitmap says
// the copy still owes is copied again. Chosen once in the plan (`--resumable`, copy-choice.ts).
//
// QEMU 7.2 cannot swap a backup's target in for the guest's disk, so the switch is: guest
// paused, the last pass (what it wrote since the catch-up passes), a `sync: none` mirror onto
// the copy (nothing to copy: READY at once) completed, which makes the copy the guest's disk,
// guest resumed. The pause is the move's downtime; a mirror has none, hence `auto`'s 1 GiB floor.
//
// A cut keeps each copy with a marker in `<data>/resume-storage/` (the shared-nothing
// destination's markers, resume-marker.ts) and the bitmap with its mark (resume-bitmaps.ts);
// a cancel keeps nothing. A kept copy is taken over by the VM's next storage move to the same
// path when its marker and the bitmap still agree, else deleted; any other move of the VM, and
// the 24 h sweep at agent start, delete it.
import fsp from 'node:fs/promises';
import { FerryError, messageOf } from '../../errors.js';
import { imageInfo } from '../../qemu/img.js';
import { nodeNames } from '../../qemu/argv.js';
import type { QmpClient } from '../../qemu/qmp.js';
import { supportsDirectIo } from '../../vm/lifecycle.js';
import {
  abandonMirrors,
  addImageNode,
  newImage,
  delNode,
  finishMirrors,
  rootNode,
  startMirror,
  waitMirrorsReady,
} from '../block.js';
import type { MirrorSpec } from '../block.js';
import { claimFile, poolRoots } from '../claim.js';
import { statOf, type KeepEntry } from '../incoming-resume.js';
import type { KeptCopies, KeptCopyAt } from '../plan.js';
import { testHold } from '../policy.js';
import { copyEta, foldMirrorProgress } from '../progress.js';
import { markBitmap, unmarkBitmap } from '../resume-bitmaps.js';
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
import { checkKeptImage, decideResume, moveKeyOf, reportResumed, type Verdict } from '../resume-marker.js';
import { dropMarker, expiredMarkers, keepImage, markersOf, readMarker, STORAGE_DIR } from '../resume-store.js';
import type { Step, StepData } from '../runner.js';
import { moving, type StorageCtx } from './storage-ctx.js';
import { closeDisks, openDisksStepFor, openedDisks, openQmpOf, readsDisks, stopLeftDaemon } from './stopped-copy.js';

/** Whether this storage move copies by resumable backup passes (decided once, in the plan). */
export function plannedResumable(ctx: Pick<StorageCtx, 'plan'>): boolean {
  return ctx.plan.copy?.method === 'resumable';
}

/** The passes run now: in the running VM's QEMU, or in the daemon that opened a stopped VM's disks. */
export function resumableStorage(ctx: Pick<StorageCtx, 'proc' | 'plan' | 'daemon'>): boolean {
  return plannedResumable(ctx) && readsDisks(ctx);
}

/** A stopped VM's resumable storage move: its disks are read by a disk daemon (stopped-copy.ts). */
const stoppedResumable = (ctx: StorageCtx): boolean => ctx.proc === null && plannedResumable(ctx);

/** Opens the stopped VM's disks the move copies. */
export const storageOpenDisks: Step<StorageCtx> = openDisksStepFor('copying-storage', stoppedResumable, (ctx) => ({
  spec: ctx.spec,
  ids: moving(ctx).map((d) => d.id),
}));

/**
 * A stopped VM's copies are whole (nothing wrote its disks): the daemon quits, the bitmap goes
 * (the commit makes the copies the VM's disks next; a failure there keeps the copies, and the
 * retry, finding no bitmap, copies again), its mark too.
 */
export const storageCloseDisks: Step<StorageCtx> = {
  name: 'close-disks',
  phase: 'copying-storage',
  when: stoppedResumable,
  async run(ctx, s) {
    const backups = (ctx.job.journalData('backup').mirrors as BackupSpec[] | undefined) ?? [];
    await closeDisks(ctx, ctx.spec.name, backups, { dropBitmaps: true, signal: s.signal });
    await unmarkBitmap(ctx.host.dataDir, ctx.spec.id, storageBitmapOf(ctx.spec.id, ctx.host.name)).catch(
      () => undefined,
    );
    s.log('the disks are copied; the disk daemon closed them');
    return undefined;
  },
};

/** A storage move's key: source and destination are this host (no shared-nothing move has that). */
export const storageKeyOf = (vmId: string, host: string): string => moveKeyOf(vmId, host, host);

/** The bitmap a storage move of the VM on this host copies by. */
export const storageBitmapOf = (vmId: string, host: string): string => resumeBitmapName(storageKeyOf(vmId, host));

/** For the plan: `dest` holds this VM disk's kept cut copy (so the file there is the move's to take or replace). */
export function keptCopyAt(dataDir: string, vmId: string): KeptCopyAt {
  return async (diskId, dest) => (await readMarker(dataDir, vmId, diskId, STORAGE_DIR))?.path === dest;
}

/** For the plan: the VM's kept copies, whose room its Begin frees unless it takes them over. */
export function keptCopiesOf(dataDir: string, vmId: string): KeptCopies {
  return async () => (await markersOf(dataDir, vmId, STORAGE_DIR)).map((m) => ({ diskId: m.diskId, path: m.path }));
}

/** A kept copy is never one of the VM's own disks (a marker could outlive a move that made it so). */
type DisksOf = { id: string; disks: ReadonlyArray<{ path: string }> };
const isDiskOf = (spec: DisksOf, p: string): boolean => spec.disks.some((d) => d.path === p);

/**
 * Deletes the VM's kept copies of cut storage moves, all or all but `keep`'s disks; returns
 * the paths deleted. A move of the VM that does not resume them calls it at its Begin.
 */
export async function dropKeptCopies(
  dataDir: string,
  spec: DisksOf,
  keep: ReadonlySet<string> = new Set(),
): Promise<string[]> {
  const gone: string[] = [];
  for (const m of await markersOf(dataDir, spec.id, STORAGE_DIR)) {
    if (keep.has(m.diskId)) continue;
    if (!isDiskOf(spec, m.path)) {
      await fsp.rm(m.path, { force: true });
      gone.push(m.path);
    }
    await dropMarker(dataDir, spec.id, m.diskId, STORAGE_DIR);
  }
  return gone;
}

/** Agent start: kept copies past 24 h are deleted, unless the path is a registered VM's disk by now. */
export async function sweepKeptCopies(dataDir: string, inUse: (p: string) => boolean): Promise<number> {
  let n = 0;
  for (const m of await expiredMarkers(dataDir, Date.now(), STORAGE_DIR)) {
    if (inUse(m.path)) continue;
    await fsp.rm(m.path, { force: true });
    n++;
  }
  return n;
}

const needQmp = (ctx: StorageCtx, what: string): QmpClient => {
  const qmp = openQmpOf(ctx);
  if (!qmp) throw new FerryError('E_VM_NOT_RUNNING', `Cannot ${what} of VM '${ctx.spec.name}': it stopped`);
  return qmp;
};

const strings = (x: unknown): string[] => (Array.isArray(x) ? x.filter((s): s is string => typeof s === 'string') : []);

/**
 * Per disk: a full backup into a new file, or (a retry that finds its kept copy and bitmap in
 * agreement) a `sync: bitmap` pass into the kept file; then catch-up passes while the guest runs.
 */
export const storageBackup: Step<StorageCtx> = {
  name: 'backup',
  phase: 'copying-storage',
  when: resumableStorage,
  async run(ctx, s) {
    const qmp = needQmp(ctx, 'copy the disks');
    const r = ctx.job.record;
    const { dataDir, name: host } = ctx.host;
    const vmId = ctx.spec.id;
    const key = storageKeyOf(vmId, host);
    const bitmap = resumeBitmapName(key);
    const speed = r.policy.bandwidthMiBps ? r.policy.bandwidthMiBps * 1024 * 1024 : undefined;
    // Marked before it exists: a sweep (an agent restarted mid-move) never finds it without a mark.
    await markBitmap(dataDir, vmId, bitmap);
    const created: string[] = [];
    const taken: string[] = [];
    const nodes: string[] = [];
    const backups: BackupSpec[] = [];
    const olds: Record<string, string> = {};
    const kept: KeepEntry[] = [];
    const verdicts = new Map<string, { v: Verdict | null; size: number }>();
    const save = (): void => s.record({ created, taken, nodes, mirrors: backups, olds, kept });
    const ids = moving(ctx).map((d) => d.id);
    // Kept copies of disks this move leaves where they are: nothing will resume them.
    await dropKeptCopies(dataDir, ctx.spec, new Set(ids));
    for (const d of moving(ctx)) {
      if (d.format !== 'qcow2' && d.format !== 'raw')
        throw new FerryError('E_MIRROR_FAILED', `Cannot copy disk '${d.id}' by backup passes: it is ${d.format}`);
      const dest = ctx.plan.disks[d.id] ?? d.path;
      const size = (await imageInfo(d.path, { forceShare: true, format: d.format })).virtualSizeBytes;
      const entry: KeepEntry = {
        moveKey: key,
        vmId,
        source: host,
        diskId: d.id,
        path: dest,
        virtualSizeBytes: size,
        format: d.format,
      };
      // The daemon names a disk's format node after the disk (argv.ts nodeNames).
      const device = ctx.proc ? await rootNode(qmp, d.id, s.signal) : nodeNames(d).format;
      olds[d.id] = device;
      const bm = await bitmapState(qmp, device, bitmap, { signal: s.signal });
      const marker = await readMarker(dataDir, vmId, d.id, STORAGE_DIR);
      // No bitmap and no kept copy: a first attempt, nothing to explain.
      const v: Verdict | null =
        !marker && bm.state === 'absent'
          ? null
          : decideResume(bm, checkKeptImage(marker, entry, await statOf(dest), Date.now()));
      verdicts.set(d.id, { v, size });
      // A kept image resumed is opened as it is; a new one may still be QEMU's to format.
      let createQcow2Bytes: number | undefined;
      if (v?.resume) {
        taken.push(dest);
        save();
        await dropMarker(dataDir, vmId, d.id, STORAGE_DIR);
      } else {
        if (marker) await dropKeptCopies(dataDir, ctx.spec, new Set(ids.filter((x) => x !== d.id)));
        // A full copy starts from an empty bitmap: it records the guest's writes from now on.
        if (bm.state !== 'absent') await removeResumeBitmap(qmp, device, bitmap);
        const img = newImage(dest, d.format, size, { inQemu: true, signal: s.signal });
        createQcow2Bytes = img.createQcow2Bytes;
        await claimFile(poolRoots(ctx.host.pools()), dest, 'a disk of the moved VM', {
          claimed: () => {
            created.push(dest);
            save();
          },
          ...img.claim,
        });
        await addResumeBitmap(qmp, device, bitmap, d.format, { signal: s.signal });
      }
      kept.push(entry);
      const base = `${d.id}-m${Date.now().toString(36)}`;
      nodes.push(`${base}-file`, base);
      save();
      const pid = ctx.proc?.pid ?? ctx.daemon?.pid;
      const held = pid ? { pid, pools: ctx.host.pools(), vm: ctx.spec.name, host: ctx.host.name } : undefined;
      await addImageNode(qmp, base, dest, d.format, d.cache === 'none' && supportsDirectIo(dest), {
        signal: s.signal,
        held,
        createQcow2Bytes,
      });
      const b: BackupSpec = {
        jobId: `copy-${d.id}`,
        diskId: d.id,
        device,
        target: base,
        bitmap,
        sync: v?.resume ? 'bitmap' : 'full',
      };
      backups.push(b);
      save();
      await startBackup(qmp, b, speed, { signal: s.signal });
    }
    const t0 = Date.now();
    const results = await waitBackups(
      qmp,
      backups,
      (js) => {
        const ps = js.map((j) => ({
          diskId: backups.find((b) => b.jobId === j.id)?.diskId ?? '',
          done: j['current-progress'],
          total: j['total-progress'],
        }));
        const { done, total, rate } = foldMirrorProgress(r, ps, t0);
        r.progress = Math.max(r.progress, Math.min(0.95, total ? 0.05 + 0.9 * (done / total) : 0.05));
        r.etaSeconds = copyEta(total - done, rate);
        ctx.job.flush();
      },
      { signal: s.signal, timeoutMs: 6 * 3600_000 },
    );
    reportResumed(
      r.disks,
      s.log,
      backups.map((b, i) => ({
        diskId: b.diskId,
        copied: results[i]?.copied,
        diskBytes: verdicts.get(b.diskId)?.size ?? 0,
        verdict: verdicts.get(b.diskId)?.v ?? null,
      })),
    );
    await catchUpAll(qmp, backups, { ...(speed ? { speedBps: speed } : {}), signal: s.signal });
    s.log('every disk is copied (what the guest writes from now on follows at the switch)');
    return { created, taken, nodes, mirrors: backups, olds, kept };
  },
  async undo(ctx, data, s) {
    // The VM's QEMU, or the daemon of a stopped VM's copy. After an agent restart that daemon
    // is not reattached but still runs, its passes still writing the copies: it is stopped
    // here, cleanly (SIGTERM: its bitmap is stored whole), before the copies are kept (their
    // marker records each file as it stays; one that changed after is not resumed).
    const qmp = openQmpOf(ctx);
    const alive = qmp !== null || (ctx.proc === null && openedDisks(ctx));
    if (!qmp && alive) await stopLeftDaemon(ctx);
    const backups = (data.mirrors as BackupSpec[] | undefined) ?? [];
    // Only the jobs' ids count there: the backup passes are cancelled like mirrors.
    const jobs = backups.map(({ jobId, diskId, device, target }): MirrorSpec => ({ jobId, diskId, device, target }));
    if (qmp) await abandonMirrors(qmp, jobs, [...strings(data.nodes)].reverse());
    const files = [...strings(data.created), ...strings(data.taken)];
    const { dataDir } = ctx.host;
    const vmId = ctx.spec.id;
    const bitmap = storageBitmapOf(vmId, ctx.host.name);
    // Cancelled: nothing is to resume. QEMU gone: its bitmap was not stored cleanly (QEMU marks
    // it inconsistent), so no retry could resume either.
    if (ctx.job.signal.aborted || !alive) {
      for (const f of files) await fsp.rm(f, { force: true });
      if (qmp) for (const b of backups) await removeResumeBitmap(qmp, b.device, b.bitmap);
      await unmarkBitmap(dataDir, vmId, bitmap).catch(() => undefined);
      return;
    }
    const entries = (data.kept as KeepEntry[] | undefined) ?? [];
    for (const f of files) {
      const e = entries.find((k) => k.path === f);
      if (!e || !(await statOf(f))) {
        await fsp.rm(f, { force: true });
        continue;
      }
      await keepImage(dataDir, e, new Date(), STORAGE_DIR);
      s.log(`disk '${e.diskId}': the partial copy at ${f} is kept; the same move-storage resumes it`);
    }
    // Kept from now: it expires with the kept copies (resume-bitmaps.ts).
    if (backups.length) await markBitmap(dataDir, vmId, bitmap).catch(() => undefined);
  },
};

/**
 * Switch-over with the guest paused: the last pass copies what the bitmap still owes, then a
 * `sync: none` mirror onto each copy is completed (the copy becomes the guest's disk) and the
 * guest runs on. A failure or a restart here is resolved by the kind's `resolve`, which also
 * resumes a guest this step paused.
 */
export const storageSwitch: Step<StorageCtx> = {
  name: 'switch',
  phase: 'switching-over',
  when: (ctx) => ctx.proc !== null && resumableStorage(ctx),
  async run(ctx, s) {
    const qmp = needQmp(ctx, 'switch the disks');
    ctx.job.enter('switching-over', 'all copies made: pausing the guest for its last writes and the switch');
    await testHold('switching-over', s.log);
    const started = ctx.job.journalData('backup');
    const backups = (started.mirrors as BackupSpec[] | undefined) ?? [];
    const olds = (started.olds as Record<string, string> | undefined) ?? {};
    const pivots: MirrorSpec[] = backups.map((b) => ({
      jobId: `pivot-${b.diskId}`,
      diskId: b.diskId,
      device: b.device,
      target: b.target,
      sync: 'none',
    }));
    const running = (await qmp.execute('query-status', undefined, { signal: s.signal, timeoutMs: 10_000 })).running;
    s.record({ paused: running, pivots });
    const t0 = Date.now();
    if (running) await qmp.execute('stop', undefined, { signal: s.signal, timeoutMs: 10_000 });
    let bytes: number;
    try {
      await testHold('storage-paused', s.log, s.signal);
      bytes = await lastPasses(qmp, backups, { signal: s.signal });
      for (const m of pivots) await startMirror(qmp, m, undefined, s.signal);
      await waitMirrorsReady(qmp, pivots, () => undefined, { signal: s.signal, timeoutMs: 60_000 });
      await finishMirrors(qmp, pivots, true);
    } finally {
      if (running) await qmp.execute('cont', undefined, { timeoutMs: 10_000 }).catch(() => undefined);
    }
    const pausedMs = Date.now() - t0;
    if (running) {
      ctx.job.record.downtimeMs = pausedMs;
      ctx.job.record.pausedBytes = bytes;
    }
    for (const b of backups) {
      // The old node stores a persistent bitmap into its file as it goes: removed first.
      await removeResumeBitmap(qmp, b.device, b.bitmap);
      const old = olds[b.diskId];
      if (old) {
        await delNode(qmp, old);
        await delNode(qmp, `${old}-file`);
      }
    }
    await unmarkBitmap(ctx.host.dataDir, ctx.spec.id, storageBitmapOf(ctx.spec.id, ctx.host.name)).catch(
      () => undefined,
    );
    s.log(
      `the disks switched to their copies; the guest was paused ${pausedMs} ms for its last ` +
        `${(bytes / 1048576).toFixed(1)} MiB of writes and the switch`,
    );
    return { paused: running, pivots };
  },
};

/** For the kind's `resolve`: the jobs and nodes of the resumable copy, as the mirror step journals them. */
export function resumableJournal(ctx: StorageCtx): StepData {
  const b = ctx.job.journalData('backup');
  const sw = ctx.job.journalData('switch');
  return {
    ...b,
    mirrors: [...((sw.pivots as MirrorSpec[] | undefined) ?? []), ...((b.mirrors as MirrorSpec[] | undefined) ?? [])],
  };
}

/** For the kind's `resolve`: a guest the switch paused runs on, whatever happened after. */
export async function resumePaused(ctx: StorageCtx, log: (m: string) => void): Promise<void> {
  const proc = ctx.proc;
  if (!proc || proc.hasExited || ctx.job.journalData('switch').paused !== true) return;
  try {
    const st = await proc.qmp.execute('query-status', undefined, { timeoutMs: 10_000 });
    if (!st.running && st.status === 'paused') {
      await proc.qmp.execute('cont', undefined, { timeoutMs: 10_000 });
      log('the guest, paused for the switch, runs again');
    }
  } catch (err) {
    log(`resuming the guest paused for the switch: ${messageOf(err)}`);
  }
}

/** The move failed after some disks switched: the copy's bitmap and its mark go (nothing resumes it). */
export async function dropStorageBitmap(ctx: StorageCtx): Promise<void> {
  const proc = ctx.proc;
  const bitmap = storageBitmapOf(ctx.spec.id, ctx.host.name);
  if (proc && !proc.hasExited)
    for (const d of moving(ctx)) {
      const node = await rootNode(proc.qmp, d.id).catch(() => null);
      if (node) await removeResumeBitmap(proc.qmp, node, bitmap);
    }
  await unmarkBitmap(ctx.host.dataDir, ctx.spec.id, bitmap).catch(() => undefined);
}
