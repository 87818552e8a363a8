// A stopped VM's resumable disk copy (issue 17 item 6), source side: a disk daemon opens
// the disks (storage-daemon.ts) and the backup step runs the same passes through it as through
// a running VM's QEMU (backup-copy.ts). Nothing writes the disks while the move holds the VM,
// so the first pass leaves the bitmap empty; closing the daemon stores it in each qcow2, where
// a retry finds it (or the VM's QEMU does, should it start before the retry, and records the
// guest's writes in it). A cut copy's daemon is closed by the undo, cleanly (QMP quit or
// SIGTERM), so its bitmap is stored right; a daemon that could only be killed leaves the bitmap
// inconsistent and the retry copies the disk whole.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { QemuProcess } from '../../qemu/process.js';
import type { QmpClient } from '../../qemu/qmp.js';
import { stopDaemonsOf, type StorageDaemon } from '../../qemu/storage-daemon.js';
import { openDisksForCopy } from '../../vm/lifecycle.js';
import type { VmSpec } from '../../vm/spec.js';
import { delNode } from '../block.js';
import type { MoveHost } from '../host.js';
import type { Job } from '../job.js';
import { bitmapState, removeResumeBitmap, type BackupSpec } from '../resume-copy.js';
import type { Step } from '../runner.js';
import { MigrationFailedError, needSpec, type SourceCtx } from '../source.js';

// As backup-copy.ts's `resumes` (not imported: backup-copy.ts imports this file's users).
const stoppedResumable = (ctx: SourceCtx): boolean => ctx.proc === null && ctx.plan?.copy.method === 'resumable';

/** What a move that opens a stopped VM's disks has (a shared-nothing or a storage move's context). */
interface DisksCtx {
  host: MoveHost;
  job: Job;
  daemon?: StorageDaemon | null;
}

/** What reads a move's disks: the running VM's QEMU, or the daemon that opened a stopped VM's. */
type Readers = { proc: QemuProcess | null; daemon?: StorageDaemon | null };

/** Something reads the disks now (a running VM's QEMU, or this move's daemon). */
export const readsDisks = (ctx: Readers): boolean => ctx.proc !== null || (ctx.daemon ?? null) !== null;

/**
 * The QMP of what reads the disks while it is there to talk to, else null: a VM's QEMU that
 * exited, or a daemon not reattached after an agent restart (its folder finds it: stopLeftDaemon).
 */
export const openQmpOf = (ctx: Readers): QmpClient | null =>
  ctx.proc ? (ctx.proc.hasExited ? null : ctx.proc.qmp) : (ctx.daemon?.qmp ?? null);

/**
 * The step that opens the disks `what` names in a storage daemon, in a folder of the move's own;
 * in `phase` (where the kind's steps around it are: a storage move is copying by then).
 */
export function openDisksStepFor<C extends DisksCtx>(
  phase: Step<C>['phase'],
  when: (ctx: C) => boolean,
  what: (ctx: C) => { spec: VmSpec; ids: string[] },
): Step<C> {
  return {
    name: 'open-disks',
    phase,
    when,
    async run(ctx, s) {
      const { spec, ids } = what(ctx);
      const dir = path.join(ctx.host.dataDir, 'run', `copy-${ctx.job.id.slice(0, 8)}`);
      // Recorded before the spawn: a restarted agent finds the daemon by its folder.
      s.record({ dir });
      const chains = await ctx.host.vms.checkStorage(spec);
      const daemon = await openDisksForCopy(spec, ids, {
        dir,
        chains,
        pools: ctx.host.pools(),
        host: ctx.host.name,
        signal: s.signal,
      });
      ctx.daemon = daemon;
      const opened = `${ids.length} disk(s) of the stopped VM`;
      s.log(`a disk daemon (QEMU without a guest, sandboxed; pid ${daemon.pid}) opened ${opened}`);
      return { dir, pid: daemon.pid };
    },
    async undo(ctx, data) {
      const daemon = ctx.daemon ?? null;
      ctx.daemon = null;
      if (daemon) await daemon.quit();
      if (typeof data.dir !== 'string') return;
      // After a restart (or a spawn the agent did not see return): found by its folder.
      await stopDaemonsOf(data.dir);
      await fsp.rm(data.dir, { recursive: true, force: true });
    },
  };
}

/**
 * After an agent restart: stops the daemon this move left running (SIGTERM: it closes the images
 * cleanly), so nothing writes a copy any more before it is kept. No-op when none runs.
 */
export async function stopLeftDaemon(ctx: Pick<DisksCtx, 'job'>): Promise<void> {
  const dir = ctx.job.journalData('open-disks').dir;
  if (typeof dir === 'string') await stopDaemonsOf(dir);
}

/** Whether this move opened a stopped VM's disks in a daemon (its journal says, also after a restart). */
export const openedDisks = (ctx: Pick<DisksCtx, 'job'>): boolean =>
  typeof ctx.job.journalData('open-disks').dir === 'string';

/**
 * The daemon's work is done: each bitmap must owe nothing (nothing writes a stopped VM's disks,
 * so the first pass copied them whole), the copy's target nodes go, the daemon quits (storing
 * the bitmaps, unless `dropBitmaps` removes them first) and its folder is removed. Throws
 * naming the disk otherwise.
 */
export async function closeDisks(
  ctx: DisksCtx,
  vm: string,
  backups: readonly BackupSpec[],
  opts: { dropBitmaps: boolean; signal: AbortSignal },
): Promise<void> {
  const daemon = ctx.daemon ?? null;
  if (!daemon) throw new MigrationFailedError('E_INTERNAL', `Cannot copy the disks of VM '${vm}': no daemon`);
  for (const b of backups) {
    const st = await bitmapState(daemon.qmp, b.device, b.bitmap, { signal: opts.signal });
    if (st.state !== 'ready' || st.dirtyBytes !== 0)
      throw new MigrationFailedError(
        'E_MIRROR_FAILED',
        `Cannot finish copying disk '${b.diskId}' of VM '${vm}': its copy still owes ` +
          `${st.state === 'ready' ? st.dirtyBytes : '?'} bytes; retry the move`,
      );
    await delNode(daemon.qmp, b.target);
    await delNode(daemon.qmp, `${b.target}-file`);
    if (opts.dropBitmaps) await removeResumeBitmap(daemon.qmp, b.device, b.bitmap);
  }
  ctx.daemon = null;
  await daemon.quit();
  await fsp.rm(daemon.dir, { recursive: true, force: true });
}

/** Opens the stopped VM's disks that a shared-nothing move copies. */
export const openDisksStep: Step<SourceCtx> = openDisksStepFor('preparing', stoppedResumable, (ctx) => ({
  spec: needSpec(ctx),
  ids: ctx.plan?.request.disks.map((d) => d.id) ?? [],
}));

/**
 * The first pass copied every disk whole: the bitmaps must owe nothing (nothing writes a
 * stopped VM's disks). The NBD nodes go, the daemon quits (storing the bitmaps, which the
 * release removes once the move completed), and the destination may register the VM.
 */
export const closeDisksStep: Step<SourceCtx> = {
  name: 'close-disks',
  phase: 'copying-storage',
  when: stoppedResumable,
  async run(ctx, s) {
    // The bitmaps stay (stored in the images) until the move completed: the release removes them.
    await closeDisks(ctx, needSpec(ctx).name, ctx.backups ?? [], { dropBitmaps: false, signal: s.signal });
    ctx.backups = [];
    s.log('the disks are copied; the disk daemon closed them');
    return undefined;
  },
};
