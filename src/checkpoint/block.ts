// The live block operations of checkpoints (QEMU 7.2): external snapshots of every disk in one
// transaction, and the stream and commit jobs that merge a removed checkpoint's data.
import { FerryError } from '../errors.js';
import type { QmpClient } from '../qemu/qmp.js';
import { sleep } from '../util/exec.js';

/** The format node (not the file node) that has `file` open in QEMU. */
export async function nodeOfImage(qmp: QmpClient, file: string, signal?: AbortSignal): Promise<string> {
  const nodes = await qmp.execute('query-named-block-nodes', { flat: true }, { signal, timeoutMs: 10_000 });
  const n = nodes.find((x) => x.file === file && x.drv !== 'file');
  if (!n)
    throw new FerryError('E_BLOCK', `Cannot find the image ${file} among the block nodes of the VM's QEMU`, {
      context: { file },
    });
  return n['node-name'];
}

/**
 * Waits for a block job started with auto-dismiss off to end, completing it when it is ready
 * (an active commit pivots then), and dismisses it; its error fails the call.
 */
export async function finishJob(
  qmp: QmpClient,
  jobId: string,
  what: string,
  opts: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<void> {
  const until = Date.now() + (opts.timeoutMs ?? 30 * 60_000);
  let completing = false;
  for (;;) {
    const jobs = await qmp.execute('query-jobs', undefined, { signal: opts.signal, timeoutMs: 10_000 });
    const j = jobs.find((x) => x.id === jobId);
    if (!j) throw new FerryError('E_BLOCK', `Cannot ${what}: QEMU's job ${jobId} vanished`);
    if (j.status === 'ready' && !completing) {
      completing = true;
      await qmp.execute('block-job-complete', { device: jobId }, { signal: opts.signal, timeoutMs: 10_000 });
    }
    if (j.status === 'concluded') {
      await qmp.execute('job-dismiss', { id: jobId }, { timeoutMs: 10_000 });
      if (j.error)
        throw new FerryError('E_BLOCK', `Cannot ${what}: QEMU's job failed (${j.error})`, { context: { jobId } });
      return;
    }
    if (Date.now() > until) {
      await qmp.execute('block-job-cancel', { device: jobId, force: true }).catch(() => undefined);
      throw new FerryError('E_TIMEOUT', `Cannot ${what}: QEMU's job ${jobId} did not end in time`);
    }
    await sleep(50, opts.signal);
  }
}

/** Streams the data of the images between node `top` and `baseNode` into `top`, which then backs onto `baseNode`. */
export async function streamInto(
  qmp: QmpClient,
  jobId: string,
  top: string,
  baseNode: string,
  what: string,
  signal?: AbortSignal,
): Promise<void> {
  await qmp.execute(
    'block-stream',
    { 'job-id': jobId, device: top, 'base-node': baseNode, 'auto-dismiss': false },
    { signal, timeoutMs: 10_000 },
  );
  await finishJob(qmp, jobId, what, { signal });
}

/**
 * Commits the data above `baseNode` up to `topNode` (default: the active layer of `device`,
 * which then pivots onto `baseNode`) into `baseNode`.
 */
export async function commitInto(
  qmp: QmpClient,
  jobId: string,
  device: string,
  baseNode: string,
  what: string,
  opts: { topNode?: string; signal?: AbortSignal } = {},
): Promise<void> {
  await qmp.execute(
    'block-commit',
    {
      'job-id': jobId,
      device,
      'base-node': baseNode,
      ...(opts.topNode ? { 'top-node': opts.topNode } : {}),
      'auto-dismiss': false,
    },
    { signal: opts.signal, timeoutMs: 10_000 },
  );
  await finishJob(qmp, jobId, what, { signal: opts.signal });
}

/**
 * Closes the block nodes QEMU still has open on `files` (an old chain after the VM pivoted onto
 * a moved copy), format nodes first. Nodes QEMU opened itself go with their parent; one that
 * cannot be closed stays open read-only and harms nothing.
 */
export async function dropNodesOf(qmp: QmpClient, files: Set<string>): Promise<void> {
  for (let round = 0; round < 8; round++) {
    const nodes = (await qmp.execute('query-named-block-nodes', { flat: true }, { timeoutMs: 10_000 })).filter((n) =>
      files.has(n.file),
    );
    if (nodes.length === 0) return;
    let dropped = 0;
    for (const n of [...nodes].sort((a, b) => Number(a.drv === 'file') - Number(b.drv === 'file'))) {
      const ok = await qmp.execute('blockdev-del', { 'node-name': n['node-name'] }, { timeoutMs: 10_000 }).then(
        () => true,
        () => false,
      );
      if (ok) dropped++;
    }
    if (dropped === 0) return;
  }
}
