// A disk copy that can resume after a cut (issue 17 item 6), source side. QEMU 7.2's
// blockdev-mirror has no bitmap sync and cannot share a disk with a backup job (measured:
// "Node is busy: block device is in use by block job: mirror", and the other way round
// "Need a root block node"), so the resumable copy is blockdev-backup with a dirty bitmap in
// bitmap-mode "always": after a FAILED job the bitmap holds exactly what was not copied plus
// what the guest wrote since the job started. A retry copies that bitmap only (sync "bitmap"),
// and further incremental passes catch up with new writes; the last one runs with the guest
// paused. The target's QEMU must export with `writethrough` (see resume-marker.ts).
import { FerryError } from '../errors.js';
import type { DirtyBitmapInfo, JobInfo } from '../qemu/commands.js';
import type { QmpClient } from '../qemu/qmp.js';
import { pollJobs } from './block.js';

/** The persistent bitmap of one move's disk copy (kept across retries of the same move). */
export function resumeBitmapName(moveKey: string): string {
  return `ferry-resume-${moveKey}`;
}

export type BitmapState =
  | { state: 'absent' }
  | { state: 'unusable'; why: string }
  | { state: 'ready'; dirtyBytes: number; persistent: boolean };

/** What QEMU says of a bitmap on a node: usable for a resume only when present, consistent and idle. */
export async function bitmapState(
  qmp: QmpClient,
  node: string,
  name: string,
  opts: { signal?: AbortSignal } = {},
): Promise<BitmapState> {
  const blocks = await qmp.execute('query-block', undefined, { signal: opts.signal, timeoutMs: 10_000 });
  const b = blocks.find((x) => x.inserted?.['node-name'] === node);
  // The disk daemon (a stopped VM's copy) has no devices: query-block lists none of its nodes.
  const bitmaps = b
    ? b.inserted?.['dirty-bitmaps']
    : (await qmp.execute('query-named-block-nodes', { flat: true }, { signal: opts.signal, timeoutMs: 10_000 })).find(
        (n) => n['node-name'] === node,
      )?.['dirty-bitmaps'];
  const bm: DirtyBitmapInfo | undefined = bitmaps?.find((x) => x.name === name);
  if (!bm) return { state: 'absent' };
  if (bm.inconsistent) return { state: 'unusable', why: 'QEMU marks it inconsistent' };
  if (bm.busy) return { state: 'unusable', why: 'a job still uses it' };
  if (!bm.recording) return { state: 'unusable', why: 'it stopped recording writes' };
  return { state: 'ready', dirtyBytes: bm.count, persistent: bm.persistent };
}

/**
 * Adds the bitmap that tracks what the copy still owes. Persistent only on qcow2 (the one
 * format that stores bitmaps), so a source QEMU restart keeps it there; elsewhere it lives as
 * long as the source QEMU does.
 */
export async function addResumeBitmap(
  qmp: QmpClient,
  node: string,
  name: string,
  format: string,
  opts: { signal?: AbortSignal } = {},
): Promise<void> {
  await qmp.execute(
    'block-dirty-bitmap-add',
    { node, name, persistent: format === 'qcow2' },
    { signal: opts.signal, timeoutMs: 10_000 },
  );
}

export async function removeResumeBitmap(qmp: QmpClient, node: string, name: string): Promise<void> {
  await qmp.execute('block-dirty-bitmap-remove', { node, name }, { timeoutMs: 10_000 }).catch(() => undefined);
}

export interface BackupSpec {
  jobId: string;
  diskId: string;
  device: string;
  target: string;
  bitmap: string;
  /** 'full': a first copy (the bitmap starts empty); 'bitmap': only what the bitmap marks. */
  sync: 'full' | 'bitmap';
}

/** Starts one pass. bitmap-mode "always": the bitmap is right after a failure too (the point of it). */
export async function startBackup(
  qmp: QmpClient,
  b: BackupSpec,
  speedBps: number | undefined,
  opts: { signal?: AbortSignal } = {},
): Promise<void> {
  await qmp.execute(
    'blockdev-backup',
    {
      'job-id': b.jobId,
      device: b.device,
      target: b.target,
      sync: b.sync,
      bitmap: b.bitmap,
      'bitmap-mode': 'always',
      'auto-finalize': true,
      'auto-dismiss': false,
      ...(speedBps ? { speed: Math.round(speedBps) } : {}),
    },
    { signal: opts.signal, timeoutMs: 10_000 },
  );
}

export interface BackupResult {
  /** Bytes this pass copied (QEMU's job counter). */
  copied: number;
  /** Bytes this pass had to copy. */
  total: number;
}

/** Waits for a pass to conclude, dismisses it; throws naming the disk (its bitmap stays right). */
export async function waitBackup(
  qmp: QmpClient,
  b: BackupSpec,
  onProgress: (j: JobInfo) => void,
  opts: { signal?: AbortSignal; timeoutMs: number },
): Promise<BackupResult> {
  const [r] = await waitBackups(qmp, [b], (js) => onProgress(js[0] as JobInfo), opts);
  return r as BackupResult;
}

/** Waits for passes running side by side (one per disk); the first that fails throws. */
export async function waitBackups(
  qmp: QmpClient,
  bs: BackupSpec[],
  onProgress: (js: JobInfo[]) => void,
  opts: { signal?: AbortSignal; timeoutMs: number },
): Promise<BackupResult[]> {
  const done = new Map<string, BackupResult>();
  const last = new Map<string, JobInfo>();
  await pollJobs(
    qmp,
    `copy disk ${bs.map((b) => `'${b.diskId}'`).join(', ')}`,
    async (jobs) => {
      for (const b of bs) {
        if (done.has(b.jobId)) continue;
        const j = jobs.find((x) => x.id === b.jobId);
        if (!j) throw new FerryError('E_MIRROR_FAILED', `Cannot copy disk '${b.diskId}': its copy job vanished`);
        last.set(b.jobId, j);
        if (j.status !== 'concluded') continue;
        await qmp.execute('job-dismiss', { id: b.jobId }, { timeoutMs: 10_000 }).catch(() => undefined);
        if (j.error) {
          throw new FerryError(
            'E_MIRROR_FAILED',
            `Cannot copy disk '${b.diskId}': its copy stopped at ${j['current-progress']} of ` +
              `${j['total-progress']} bytes (${j.error}); a retry to the same host resumes from there`,
            { context: { disk: b.diskId, error: j.error, copied: j['current-progress'] } },
          );
        }
        done.set(b.jobId, { copied: j['current-progress'], total: j['total-progress'] });
      }
      onProgress(bs.map((b) => last.get(b.jobId)).filter((j): j is JobInfo => j !== undefined));
      return done.size === bs.length;
    },
    opts,
  );
  return bs.map((b) => done.get(b.jobId) as BackupResult);
}

/**
 * Incremental passes while the guest runs, until the bitmap owes at most `smallBytes` (or
 * `maxPasses` ran): what is left is the last pass's work, done with the guest paused. Each
 * pass runs to a fresh target node made by `addTarget` and deleted after it.
 */
export async function catchUp(
  qmp: QmpClient,
  b: Omit<BackupSpec, 'sync'>,
  opts: {
    smallBytes: number;
    maxPasses: number;
    speedBps?: number;
    addTarget: () => Promise<void>;
    delTarget: () => Promise<void>;
    signal?: AbortSignal;
    timeoutMs: number;
  },
): Promise<{ passes: number; copied: number; owed: number }> {
  let copied = 0;
  let passes = 0;
  for (;;) {
    const st = await bitmapState(qmp, b.device, b.bitmap, opts);
    if (st.state !== 'ready')
      throw new FerryError(
        'E_MIRROR_FAILED',
        `Cannot copy disk '${b.diskId}': its record of what was copied is ${st.state}` +
          (st.state === 'unusable' ? ` (${st.why})` : '') +
          '; retry the move (it copies the disk again)',
        { context: { disk: b.diskId } },
      );
    if (st.dirtyBytes <= opts.smallBytes || passes >= opts.maxPasses) return { passes, copied, owed: st.dirtyBytes };
    await opts.addTarget();
    try {
      const spec: BackupSpec = { ...b, sync: 'bitmap' };
      await startBackup(qmp, spec, opts.speedBps, opts);
      copied += (await waitBackup(qmp, spec, () => undefined, opts)).copied;
    } finally {
      await opts.delTarget();
    }
    passes++;
  }
}

/** Catch-up passes stop once a disk owes this little: the rest is the paused last pass's. */
const SMALL_BYTES = 2 * 1024 * 1024;
const MAX_CATCH_UP = 4;

/** After every disk's first pass: catch-up passes with the guest running, so the paused last pass is short. */
export async function catchUpAll(
  qmp: QmpClient,
  backups: readonly BackupSpec[],
  opts: { speedBps?: number; signal?: AbortSignal },
): Promise<void> {
  for (const b of backups)
    await catchUp(qmp, b, {
      smallBytes: SMALL_BYTES,
      maxPasses: MAX_CATCH_UP,
      ...(opts.speedBps ? { speedBps: opts.speedBps } : {}),
      addTarget: () => Promise.resolve(),
      delTarget: () => Promise.resolve(),
      ...(opts.signal ? { signal: opts.signal } : {}),
      timeoutMs: 3600_000,
    });
}

/**
 * The last pass of every disk, with the guest paused: what the bitmap still owes. Throws
 * naming the disk unless each owes nothing after it; returns the bytes it copied.
 */
export async function lastPasses(
  qmp: QmpClient,
  backups: readonly BackupSpec[],
  opts: { signal?: AbortSignal } = {},
): Promise<number> {
  const passes = backups.map((b): BackupSpec => ({ ...b, sync: 'bitmap' }));
  for (const b of passes) await startBackup(qmp, b, undefined, opts);
  const res = await waitBackups(qmp, passes, () => undefined, { ...opts, timeoutMs: 120_000 });
  for (const b of passes) {
    const st = await bitmapState(qmp, b.device, b.bitmap, opts);
    if (st.state !== 'ready' || st.dirtyBytes !== 0)
      throw new FerryError(
        'E_MIRROR_FAILED',
        `Cannot finish copying disk '${b.diskId}': the guest is paused but its copy still owes ` +
          `${st.state === 'ready' ? st.dirtyBytes : '?'} bytes; retry the move`,
        { context: { disk: b.diskId } },
      );
  }
  return res.reduce((a, x) => a + x.copied, 0);
}
