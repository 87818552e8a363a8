// Block-layer steps shared by shared-nothing and storage migration (QEMU-NOTES §B, §C):
// find a disk's live root node, add image nodes, run mirror jobs to READY with progress,
// complete or cancel them, and always clean up jobs and nodes.
import { FerryError, messageOf } from '../errors.js';
import type { QmpClient } from '../qemu/qmp.js';
import type { JobInfo, QmpEvent } from '../qemu/commands.js';
import { sleep } from '../util/exec.js';
import { isVarsQdev } from '../qemu/argv.js';
import { checkOpenedFiles } from '../qemu/opened-files.js';
import { createImage, sizeRawImage, type ImageFormat } from '../qemu/img.js';
import type { PoolDef } from '../storage/pools.js';
import { VARS_DISK_ID } from '../vm/spec.js';

type CreateBacking = { path: string; format: ImageFormat };

/** The node a guest disk currently reads and writes (it changes after a storage move's pivot). */
export async function rootNode(qmp: QmpClient, diskId: string, signal?: AbortSignal): Promise<string> {
  return (await diskRoot(qmp, diskId, signal)).node;
}

/** A guest disk's root node, how many backing images lie under it (0: none), its size as QEMU has it. */
export async function diskRoot(
  qmp: QmpClient,
  diskId: string,
  signal?: AbortSignal,
): Promise<{ node: string; backingDepth: number | null; virtualSizeBytes: number }> {
  const blocks = await qmp.execute('query-block', undefined, { signal });
  const b = blocks.find(
    (x) =>
      x.qdev === diskId ||
      x.qdev === `/machine/peripheral/${diskId}/virtio-backend` ||
      x.qdev?.startsWith(`/machine/peripheral/${diskId}/`) ||
      (diskId === VARS_DISK_ID && isVarsQdev(x.qdev)),
  );
  const inserted = b?.inserted;
  const node = inserted?.['node-name'];
  if (!inserted || !node)
    throw new FerryError('E_BLOCK', `Cannot find the block node of disk '${diskId}' in QEMU`, { context: { diskId } });
  const depth = inserted.backing_file_depth;
  return {
    node,
    backingDepth: typeof depth === 'number' ? depth : null,
    virtualSizeBytes: inserted.image['virtual-size'],
  };
}

/** Image formats a new image of reads as zeros everywhere (what `qemu-img create` makes of them). */
const ZERO_ON_CREATE = new Set(['qcow2', 'raw']);

/**
 * The sync of a mirror onto an image made for it (empty, so it reads as zeros): 'top' when the
 * disk has no backing image, else 'full' (the chain flattened into the target). Both copy the
 * same data then, but QEMU 7.2's 'full' first writes zeroes over the whole target
 * (`zero_target`; the skip for a target already zero came in 10.1): a 10 GiB disk holding
 * 100 MiB sent 10 GiB of write-zeroes requests over NBD before its data. 'top' with no backing
 * marks only what the disk holds (for raw, its whole length: QEMU then writes zeroes for holes,
 * as 'full' does).
 */
export function syncOntoNew(backingDepth: number | null, targetFormat: string): 'full' | 'top' {
  return backingDepth === 0 && ZERO_ON_CREATE.has(targetFormat) ? 'top' : 'full';
}

/** How a move makes a new image (newImage). */
export interface NewImage {
  /** What claimFile does through the claimed file's handle. */
  claim: { forQemu?: boolean; fill?: (fd: number) => Promise<void> };
  /** For addImageNode once QEMU opened the file: the size of the qcow2 QEMU formats (none: undefined). */
  createQcow2Bytes: number | undefined;
}

/**
 * How a move makes a new image at `file` (claimed exclusively), with as few processes as it can:
 * a raw one is sized through the claimed handle (sizeRawImage); a qcow2 one with no backing is
 * formatted by the QEMU that then opens it when there is one (`inQemu`: a running VM's, or the
 * disk daemon's; not an arriving VM's, whose QEMU opens its disks when it starts); anything else
 * by `qemu-img create` through the handle (an overlay names its backing without opening it). A
 * `qemu-img create` costs a process start: ~35–50 ms of a storage move's copy here.
 */
export function newImage(
  file: string,
  format: ImageFormat,
  sizeBytes: number,
  o: {
    inQemu: boolean;
    signal?: AbortSignal | undefined;
    backing?: CreateBacking | undefined;
    unsafeBacking?: boolean;
  },
): NewImage {
  if (!o.backing && format === 'raw')
    return { claim: { forQemu: true, fill: (fd) => sizeRawImage(fd, sizeBytes) }, createQcow2Bytes: undefined };
  if (!o.backing && format === 'qcow2' && o.inQemu) return { claim: { forQemu: true }, createQcow2Bytes: sizeBytes };
  const { backing, signal } = o;
  const fill = (fd: number): Promise<void> =>
    createImage(file, format, sizeBytes, {
      fd,
      ...(signal ? { signal } : {}),
      ...(backing ? { backing, ...(o.unsafeBacking ? { unsafeBacking: true } : {}) } : {}),
    });
  return { claim: { fill }, createQcow2Bytes: undefined };
}

export interface ImageNodeOptions {
  signal?: AbortSignal | undefined;
  /**
   * QEMU (its pid) must then hold the very file the agent finds at `file` through no-link
   * handles (qemu/opened-files.ts): a target made in a shared pool could be swapped before QEMU
   * opened it.
   */
  held?: { pid: number; pools: readonly PoolDef[]; vm: string; host: string } | undefined;
  /** The file is empty, just claimed: QEMU formats it as a new qcow2 image of this many bytes first. */
  createQcow2Bytes?: number | undefined;
}

/** Adds file + format nodes for an image (`<base>-file`, `<base>`). */
export async function addImageNode(
  qmp: QmpClient,
  base: string,
  file: string,
  format: string,
  direct: boolean,
  o: ImageNodeOptions = {},
): Promise<void> {
  const { signal, held } = o;
  const cache = { direct, 'no-flush': false };
  await qmp.execute('blockdev-add', { driver: 'file', filename: file, 'node-name': `${base}-file`, cache }, { signal });
  try {
    if (held) await checkOpenedFiles(held.pid, [file], held.pools, { vm: held.vm, host: held.host, signal });
    if (o.createQcow2Bytes !== undefined) await formatQcow2(qmp, `${base}-file`, o.createQcow2Bytes, file, signal);
    await qmp.execute('blockdev-add', { driver: format, file: `${base}-file`, 'node-name': base, cache }, { signal });
  } catch (err) {
    await qmp.execute('blockdev-del', { 'node-name': `${base}-file` }).catch(() => undefined);
    throw err;
  }
}

/**
 * Writes a new qcow2 image of `sizeBytes` onto the empty file node `fileNode` (QMP
 * `blockdev-create`, QEMU's own code behind `qemu-img create`, with its defaults) and waits for
 * the job; a job that fails or does not end in time is cancelled and dismissed.
 */
export async function formatQcow2(
  qmp: QmpClient,
  fileNode: string,
  sizeBytes: number,
  file: string,
  signal?: AbortSignal,
): Promise<void> {
  const id = `${fileNode}-create`;
  const mark = qmp.eventMark;
  const concludedEvent = (e: QmpEvent): boolean =>
    e.event === 'JOB_STATUS_CHANGE' && e.data?.id === id && e.data.status === 'concluded';
  // Sent without the signal: an abort while QEMU already has the command would leave its job
  // unseen; the wait below takes the signal, and its clean-up runs whatever happens.
  await qmp.execute('blockdev-create', { 'job-id': id, options: { driver: 'qcow2', file: fileNode, size: sizeBytes } });
  let concluded = false;
  try {
    await qmp.waitEvent(concludedEvent, { since: mark, signal, timeoutMs: 60_000, what: `create the image ${file}` });
    concluded = true;
    const job = (await qmp.execute('query-jobs', undefined, { signal, timeoutMs: 10_000 })).find((j) => j.id === id);
    if (job?.error)
      throw new FerryError(
        'E_BLOCK',
        `Cannot create the image ${file}: QEMU says ${job.error}; check the pool's free space and retry`,
        { context: { file } },
      );
  } finally {
    if (!concluded) {
      // A job still running holds the file node: cancelled and waited for, so the node can go.
      await qmp.execute('job-cancel', { id }, { timeoutMs: 10_000 }).catch(() => undefined);
      await qmp.waitEvent(concludedEvent, { since: mark, timeoutMs: 10_000 }).catch(() => undefined);
    }
    await qmp.execute('job-dismiss', { id }, { timeoutMs: 10_000 }).catch(() => undefined);
  }
}

export async function delNode(qmp: QmpClient, node: string): Promise<void> {
  await qmp.execute('blockdev-del', { 'node-name': node }, { timeoutMs: 10_000 }).catch(() => undefined);
}

export interface MirrorSpec {
  jobId: string;
  diskId: string;
  device: string;
  target: string;
  /**
   * 'top': only the active layer (the target's backing already holds the chain below it);
   * 'none': only what the guest writes from now on (the target holds the rest: a storage move's
   * resumable copy uses it to switch the guest onto its copy, kinds/storage-resume.ts).
   */
  sync?: 'full' | 'top' | 'none';
}

export async function startMirror(
  qmp: QmpClient,
  m: MirrorSpec,
  speedBps: number | undefined,
  signal?: AbortSignal,
): Promise<void> {
  await qmp.execute(
    'blockdev-mirror',
    {
      'job-id': m.jobId,
      device: m.device,
      target: m.target,
      sync: m.sync ?? 'full',
      'auto-finalize': true,
      'auto-dismiss': false,
      ...(speedBps ? { speed: Math.round(speedBps) } : {}),
    },
    { signal },
  );
}

export interface MirrorProgress {
  jobId: string;
  diskId: string;
  done: number;
  total: number;
  ready: boolean;
}

/**
 * The one job-wait loop of the block layer: asks QEMU for its jobs, hands them to `step` until
 * it says done (it throws to fail), woken by block-job events or every `wakeMs` (250 ms).
 */
export async function pollJobs(
  qmp: QmpClient,
  what: string,
  step: (jobs: JobInfo[]) => boolean | Promise<boolean>,
  opts: { signal?: AbortSignal; timeoutMs: number; wakeMs?: number },
): Promise<void> {
  const until = Date.now() + opts.timeoutMs;
  for (;;) {
    if (opts.signal?.aborted)
      throw opts.signal.reason instanceof Error ? opts.signal.reason : new FerryError('E_ABORTED', 'cancelled');
    // Marked before asking: an event read in the same chunk as the answer (a job ready just
    // after QEMU answered) is then still seen, instead of costing a whole wake interval.
    const mark = qmp.eventMark;
    const jobs = await qmp.execute('query-jobs', undefined, { timeoutMs: 10_000 });
    if (await step(jobs)) return;
    if (Date.now() > until)
      throw new FerryError('E_TIMEOUT', `Cannot ${what} within ${Math.round(opts.timeoutMs / 1000)} s`);
    await qmp
      .waitEvent(
        (e) => e.event === 'BLOCK_JOB_READY' || e.event === 'BLOCK_JOB_COMPLETED' || e.event === 'BLOCK_JOB_ERROR',
        { since: mark, timeoutMs: opts.wakeMs ?? 250 },
      )
      .catch(() => undefined);
  }
}

/**
 * Waits until every mirror is READY (from then on every guest write goes to both copies),
 * reporting progress; throws naming the disk if a job fails.
 */
export async function waitMirrorsReady(
  qmp: QmpClient,
  mirrors: MirrorSpec[],
  onProgress: (p: MirrorProgress[]) => void,
  opts: { signal?: AbortSignal; timeoutMs: number; wakeMs?: number },
): Promise<void> {
  await pollJobs(
    qmp,
    'copy the disks',
    (jobs) => {
      const ps = mirrors.map((m) => {
        const j = jobs.find((x) => x.id === m.jobId);
        if (!j) throw new FerryError('E_MIRROR_FAILED', `Cannot copy disk '${m.diskId}': its mirror job vanished`);
        failIfBroken(j, m);
        return {
          jobId: m.jobId,
          diskId: m.diskId,
          done: j['current-progress'],
          total: j['total-progress'],
          ready: j.status === 'ready',
        };
      });
      onProgress(ps);
      return ps.every((p) => p.ready);
    },
    opts,
  );
}

export function failIfBroken(j: JobInfo, m: MirrorSpec): void {
  if (j.error || j.status === 'concluded' || j.status === 'aborting' || j.status === 'null') {
    throw new FerryError(
      'E_MIRROR_FAILED',
      `Cannot copy disk '${m.diskId}': its mirror stopped (${j.error ?? j.status})`,
      { context: { disk: m.diskId, error: j.error } },
    );
  }
}

/** Throws if any mirror broke (checked while memory is copied). */
export async function checkMirrors(qmp: QmpClient, mirrors: MirrorSpec[]): Promise<JobInfo[]> {
  if (!mirrors.length) return [];
  const jobs = await qmp.execute('query-jobs', undefined, { timeoutMs: 10_000 });
  for (const m of mirrors) {
    const j = jobs.find((x) => x.id === m.jobId);
    if (!j) throw new FerryError('E_MIRROR_FAILED', `Cannot copy disk '${m.diskId}': its mirror job vanished`);
    failIfBroken(j, m);
  }
  return jobs;
}

/**
 * Ends READY mirrors. `pivot`: the guest switches to the copy (storage move,
 * block-job-complete); else the copy is finished without a switch (block-job-cancel on a
 * READY mirror: shared-nothing at pre-switchover). Waits for each to conclude cleanly and
 * returns the bytes they copied meanwhile (what the disks still owed).
 */
export async function finishMirrors(qmp: QmpClient, mirrors: MirrorSpec[], pivot: boolean): Promise<number> {
  // A mirror that broke since READY (e.g. its target filled up) must say so, not fail
  // later with QEMU's "cannot accept command verb".
  const jobs = await checkMirrors(qmp, mirrors);
  const mark = qmp.eventMark;
  let copied = 0;
  for (const m of mirrors) {
    if (pivot) await qmp.execute('block-job-complete', { device: m.jobId }, { timeoutMs: 10_000 });
    else await qmp.execute('block-job-cancel', { device: m.jobId, force: false }, { timeoutMs: 10_000 });
  }
  for (const m of mirrors) {
    const e = await qmp.waitEvent(
      (ev) => (ev.event === 'BLOCK_JOB_COMPLETED' || ev.event === 'BLOCK_JOB_CANCELLED') && ev.data?.device === m.jobId,
      { since: mark, timeoutMs: 60_000 },
    );
    if (e.event === 'BLOCK_JOB_CANCELLED' || e.data?.error) {
      const why = typeof e.data?.error === 'string' ? e.data.error : 'the job was cancelled';
      throw new FerryError('E_MIRROR_FAILED', `Cannot finish copying disk '${m.diskId}': ${why}`, {
        context: { disk: m.diskId },
      });
    }
    const before = jobs.find((x) => x.id === m.jobId)?.['current-progress'];
    const after = e.data?.offset;
    if (typeof before === 'number' && typeof after === 'number') copied += Math.max(0, after - before);
    await qmp.execute('job-dismiss', { id: m.jobId }, { timeoutMs: 10_000 }).catch(() => undefined);
  }
  return copied;
}

/** Abort path: force-cancel whatever is left of the jobs, dismiss them, delete target nodes. */
export async function abandonMirrors(qmp: QmpClient, mirrors: MirrorSpec[], targets: string[]): Promise<void> {
  let jobs: JobInfo[];
  try {
    jobs = await qmp.execute('query-jobs', undefined, { timeoutMs: 10_000 });
  } catch {
    return;
  }
  const mark = qmp.eventMark;
  for (const m of mirrors) {
    const j = jobs.find((x) => x.id === m.jobId);
    if (!j) continue;
    if (j.status !== 'concluded' && j.status !== 'null') {
      await qmp
        .execute('block-job-cancel', { device: m.jobId, force: true }, { timeoutMs: 10_000 })
        .catch(() => undefined);
      await qmp
        .waitEvent(
          (ev) =>
            (ev.event === 'BLOCK_JOB_CANCELLED' || ev.event === 'BLOCK_JOB_COMPLETED') && ev.data?.device === m.jobId,
          { since: mark, timeoutMs: 30_000 },
        )
        .catch(() => undefined);
    }
    for (let i = 0; i < 50; i++) {
      try {
        await qmp.execute('job-dismiss', { id: m.jobId }, { timeoutMs: 5000 });
        break;
      } catch (err) {
        if (!/cannot accept/i.test(messageOf(err))) break; // gone already
        await sleep(100); // not concluded yet
      }
    }
  }
  for (const t of targets) await delNode(qmp, t);
}

/**
 * Leftovers of an earlier move of this VM whose clean-up could not finish (a cancelled mirror
 * waits for its requests to a cut link, so the NBD node stayed in use): its mirror jobs and
 * NBD nodes are removed before a new move adds its own of the same names. Throws, with the
 * fix, when they are still busy.
 */
export async function sweepMirrorLeftovers(qmp: QmpClient, vm: string, signal?: AbortSignal): Promise<void> {
  const jobs = await qmp.execute('query-jobs', undefined, { signal, timeoutMs: 10_000 });
  const stale = jobs.filter((j) => j.id.startsWith('mirror-')).map((j) => j.id);
  const nodeNames = async (): Promise<string[]> =>
    (await qmp.execute('query-named-block-nodes', { flat: true }, { signal, timeoutMs: 10_000 }))
      .map((n) => n['node-name'])
      .filter((n) => n.startsWith('mig-'));
  const nodes = await nodeNames();
  if (!stale.length && !nodes.length) return;
  await abandonMirrors(
    qmp,
    stale.map((jobId) => ({ jobId, diskId: '', device: '', target: '' })),
    nodes,
  );
  const left = await nodeNames();
  if (left.length)
    throw new FerryError(
      'E_MIRROR_LEFTOVER',
      `Cannot mirror the disks of VM '${vm}': an earlier move's disk copy (${left.join(', ')}) is still ` +
        'waiting for its cut link; retry the move in a minute',
      { context: { vm, nodes: left } },
    );
}
