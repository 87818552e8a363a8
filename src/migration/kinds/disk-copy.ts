// What the two ways of copying a running VM's disks share (the mirror of live.ts, the
// resumable backup passes of backup-copy.ts): the NBD node on the destination's export, and
// the progress, ETA and stall watch of the disk copy that the memory copy follows.
import type { QmpClient } from '../../qemu/qmp.js';
import { StallWatchdog, stallTimeoutMs } from '../policy.js';
import { foldMirrorProgress } from '../progress.js';
import { destReason, stalledError, type SourceCtx } from '../source.js';

/** Adds node `node` on the destination's NBD export of disk `diskId` (over TLS when the domain uses it). */
export async function addNbdTarget(
  ctx: SourceCtx,
  qmp: QmpClient,
  nbd: { host: string; port: number },
  diskId: string,
  node: string,
  signal: AbortSignal,
): Promise<void> {
  const tls = ctx.host.settings().tls;
  await ctx.tlsReady;
  await qmp.execute(
    'blockdev-add',
    {
      driver: 'nbd',
      'node-name': node,
      export: diskId,
      'read-only': false,
      server: { type: 'inet', host: nbd.host, port: String(nbd.port) },
      ...(tls
        ? { 'tls-creds': `ferry-tls-${ctx.job.id.slice(0, 8)}`, 'tls-hostname': ctx.prep?.tlsHostname ?? ctx.to.name }
        : {}),
    },
    { signal },
  );
}

class StallSignal extends Error {}

/**
 * The record's progress and ETA while the disks copy, one ETA across the phases (the rest of
 * the disks, then memory, at the rate seen), and the stall watch: `sample` throws once no
 * byte moved for the stall time, `failed` turns that into the move's stalled error.
 */
export class DiskCopyWatch {
  /** The share of the whole move the disks take (the memory copy's progress starts there). */
  split = 0.5;
  private readonly t0 = Date.now();
  private readonly stallMs = stallTimeoutMs();
  private readonly watchdog = new StallWatchdog(this.stallMs);

  constructor(
    private readonly ctx: SourceCtx,
    private readonly memBytes: number,
  ) {
    this.watchdog.reset(this.t0);
  }

  sample(ps: Array<{ diskId: string; done: number; total: number }>): void {
    const r = this.ctx.job.record;
    const { done, total, rate } = foldMirrorProgress(r, ps, this.t0);
    const stalled = this.watchdog.feed(done, Date.now());
    this.split = 0.02 + 0.95 * (total / Math.max(1, total + this.memBytes));
    r.progress = Math.max(r.progress, 0.02 + (this.split - 0.02) * (total ? done / total : 0));
    r.etaSeconds = rate > 0 ? Math.round(((total - done + this.memBytes) / rate) * 10) / 10 : null;
    this.ctx.job.flush();
    if (stalled) throw new StallSignal();
  }

  async failed(err: unknown, vm: string): Promise<never> {
    if (!(err instanceof StallSignal)) throw err;
    const stuck = this.ctx.job.record.disks.filter((d) => d.bytesDone < d.bytesTotal).map((d) => `'${d.id}'`);
    const what = stuck.length ? `no data of disk ${stuck.join(', ')} moved` : 'no disk data moved';
    throw stalledError(vm, this.ctx.to.name, this.stallMs, what, await destReason(this.ctx));
  }
}
