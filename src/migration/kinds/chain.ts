// Shared nothing with checkpoints, the source's part (libvirt's incremental copy shape): the
// chain's read-only files — the checkpoints' overlays, their memory files, the base images — are
// copied once, each byte for byte into the file the destination made for it and serves over NBD
// (TLS, this host's certificate only), with qemu-img while the VM runs (nothing writes them).
// Then the destination points the copies at each other, writes the tree and starts QEMU on
// overlays over the copy, and the disks are mirrored with sync=top: only their active layers move.
import { peerActions } from '../../api/peer-actions.js';
import { qemuImgWithProgress } from '../../qemu/img-progress.js';
import { chainFilename, withHeldFiles } from '../../qemu/img-files.js';
import { stallTimeoutMs } from '../policy.js';
import type { Step } from '../runner.js';
import { MigrationFailedError, needSpec, stalledError, type SourceCtx } from '../source.js';
import { TLS_PRIORITY, qemuTlsDir } from '../tls.js';
import { checkPrepared, undoPrepare } from './common.js';

const MiB = 1048576;

/** qemu-img's arguments for writing the destination's NBD export `name` (TLS when the host uses it). */
export async function nbdTargetArgs(
  ctx: SourceCtx,
  nbd: { host: string; port: number },
  name: string,
): Promise<{ object: string[]; target: string }> {
  const tlsDir = ctx.host.settings().tls ? await qemuTlsDir(ctx.host.tls, ctx.host.dataDir) : null;
  const target = [
    'driver=nbd',
    'server.type=inet',
    `server.host=${nbd.host}`,
    `server.port=${nbd.port}`,
    `export=${name}`,
    ...(tlsDir ? ['tls-creds=tls0', `tls-hostname=${ctx.prep?.tlsHostname ?? ctx.to.name}`] : []),
  ].join(',');
  const object = tlsDir
    ? ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${tlsDir},priority=${TLS_PRIORITY}`]
    : [];
  return { object, target };
}

export const chainStep: Step<SourceCtx> = {
  name: 'chain',
  phase: 'copying-storage',
  when: (ctx) => Boolean(ctx.prep?.chainNbd),
  async run(ctx, s) {
    const spec = needSpec(ctx);
    const r = ctx.job.record;
    const nbd = ctx.prep?.chainNbd;
    const files = ctx.plan?.chain?.files ?? [];
    const sizes = ctx.plan?.request.chain?.files.map((f) => f.bytes) ?? [];
    if (!nbd || sizes.length !== files.length)
      throw new MigrationFailedError('E_PREPARE', `Cannot copy the checkpoints of VM '${spec.name}': no chain export`);
    const total = sizes.reduce((a, b) => a + b, 0);
    ctx.job.enter(
      'copying-storage',
      `copying the checkpoint chain to ${ctx.to.name}: ${files.length} file(s), ${(total / MiB).toFixed(0)} MiB`,
    );
    const t0 = Date.now();
    let before = 0;
    for (const [i, f] of files.entries()) {
      const { object, target } = await nbdTargetArgs(ctx, nbd, `chain${i}`);
      const stallMs = 4 * stallTimeoutMs();
      const bytes = sizes[i] ?? 0;
      // Raw on both ends: the file's own bytes (a qcow2 overlay's header and clusters as they are),
      // read through a handle opened without links (qemu/img-files.ts).
      const what = `a checkpoint file of VM '${spec.name}'`;
      await withHeldFiles(ctx.host.pools(), [f.from], what, (nameOf, fds) =>
        qemuImgWithProgress(
          [
            'convert',
            '-p',
            '-n',
            '--target-is-zero',
            ...object,
            chainFilename([{ path: f.from, format: 'raw' }], nameOf),
            '--target-image-opts',
            target,
          ],
          s.signal,
          stallMs,
          () => stalledError(spec.name, ctx.to.name, stallMs, 'no checkpoint data moved'),
          (pct) => {
            const done = before + (pct / 100) * bytes;
            r.progress = Math.max(r.progress, 0.02 + 0.1 * (done / Math.max(1, total)));
            ctx.job.flush();
          },
          fds,
        ),
      );
      before += bytes;
    }
    const ms = Date.now() - t0;
    s.log(`checkpoint chain copied: ${files.length} file(s), ${total} bytes in ${ms} ms`);
    // The destination now writes the tree, makes the disks over the copy and starts QEMU.
    const v = await ctx.dest.call(
      peerActions.chain,
      { params: { id: ctx.job.id } },
      { signal: s.signal, timeoutMs: 120_000 },
    );
    await checkPrepared(ctx, v, s.signal);
    if (ctx.proc && !v.uri)
      throw new MigrationFailedError(
        'E_PREPARE',
        `Cannot move VM '${spec.name}': the destination gave no stream address`,
      );
    ctx.prep = v;
    return { uri: v.uri, nbd: v.nbd, chainBytes: total, chainMs: ms };
  },
  async undo(ctx, _data, s) {
    await undoPrepare(ctx, s.log);
  },
};
