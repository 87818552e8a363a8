// Shared nothing for a stopped VM: the destination creates the disks and serves them over
// NBD (its QEMU paused, the guest never runs), the source copies each image into them with
// qemu-img (zero regions skipped), then the destination registers the VM and the source
// deletes its copies. Any failure removes what the destination created.
import { spawn } from 'node:child_process';
import { FerryError, AbortedError } from '../errors.js';
import type { AgentClient } from '../api/client.js';
import { peerActions, type IncomingRequest } from '../api/peer-actions.js';
import type { VmSpec } from '../vm/spec.js';
import { qemuTlsDir } from './tls.js';
import { prepareWhenFree, type Job } from './job.js';
import { stallTimeoutMs } from './policy.js';
import { stalledError } from './live.js';

export interface OfflineContext {
  job: Job;
  spec: VmSpec;
  dest: AgentClient;
  sourceName: string;
  tls: boolean;
  tlsFiles: { ca: string; cert: string; key: string };
  dataDir: string;
  storage: { destSpec: VmSpec; request: NonNullable<IncomingRequest['storage']> };
  onDone: () => Promise<void>;
}

export async function runOfflineCopy(ctx: OfflineContext): Promise<void> {
  const { job, spec, dest } = ctx;
  const r = job.record;
  const signal = job.signal;
  let prepared = false;
  try {
    job.setState('preparing', `preparing ${r.destination} to receive the disks`);
    const prep = await prepareWhenFree(job, dest, {
      jobId: job.id,
      source: ctx.sourceName,
      spec: ctx.storage.destSpec as unknown as Record<string, unknown>,
      tls: ctx.tls,
      postcopy: false,
      stopped: true,
      storage: ctx.storage.request,
    });
    prepared = true;
    if (!prep.nbd)
      throw new FerryError(
        'E_PREPARE',
        `Cannot copy the disks of VM '${spec.name}': the destination gave no NBD address`,
      );
    job.setState('copying-storage', `copying ${ctx.storage.request.disks.length} disk(s) to ${r.destination}`);
    const tlsDir = ctx.tls ? await qemuTlsDir(ctx.tlsFiles, ctx.dataDir) : null;
    const total = ctx.storage.request.disks.reduce((a, d) => a + d.allocatedBytes, 0) || 1;
    let before = 0;
    const t0 = Date.now();
    for (const d of ctx.storage.request.disks) {
      const src = spec.disks.find((x) => x.id === d.id)!;
      const target = [
        `driver=nbd`,
        `server.type=inet`,
        `server.host=${prep.nbd.host}`,
        `server.port=${prep.nbd.port}`,
        `export=${d.id}`,
        ...(tlsDir ? ['tls-creds=tls0', `tls-hostname=${prep.tlsHostname}`] : []),
      ].join(',');
      const args = [
        'convert',
        '-p',
        '-n',
        '--target-is-zero',
        '-f',
        src.format,
        ...(tlsDir ? ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${tlsDir}`] : []),
        src.path,
        '--target-image-opts',
        target,
      ];
      // qemu-img reports whole percents only: allow a few watchdog periods between them.
      const stallMs = 4 * stallTimeoutMs();
      await qemuImgWithProgress(
        args,
        signal,
        stallMs,
        () => stalledError(spec.name, r.destination, stallMs, 'no disk data moved'),
        (pct) => {
          const disk = r.disks.find((x) => x.id === d.id);
          if (disk) disk.bytesDone = Math.round((pct / 100) * disk.bytesTotal);
          const done = before + (pct / 100) * d.allocatedBytes;
          r.bytesTransferred = Math.round(done);
          const rate = done / Math.max(0.001, (Date.now() - t0) / 1000);
          r.rate = { transferBps: Math.round(rate), dirtyBps: 0 };
          r.progress = Math.max(r.progress, 0.02 + 0.93 * (done / total));
          r.etaSeconds = rate > 0 ? Math.round(((total - done) / rate) * 10) / 10 : null;
          job.flush();
        },
      );
      before += d.allocatedBytes;
    }
    job.cancellable = false;
    job.setState('switching-over', `disks copied: ${r.destination} registers the VM`);
    await dest.call(peerActions.finish, { params: { id: job.id } }, { timeoutMs: 60_000 });
    await ctx.onDone();
  } catch (err) {
    if (prepared)
      await dest
        .call(peerActions.abort, { params: { id: job.id } }, { timeoutMs: 30_000 })
        .catch((e: unknown) => job.log(`cleaning up ${r.destination}: ${(e as Error).message}`));
    throw err;
  }
}

/** Runs qemu-img with -p, reporting its percentage; killed when `signal` aborts. */
function qemuImgWithProgress(
  args: string[],
  signal: AbortSignal,
  stallMs: number,
  stalled: () => Error,
  onPct: (pct: number) => void,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('qemu-img', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    // Over a cut link qemu-img waits on TCP for many minutes: kill it when the percentage stops.
    let stalledErr: Error | null = null;
    let lastPct = -1;
    let watch = setTimeout(() => {
      stalledErr = stalled();
      child.kill('SIGKILL');
    }, stallMs);
    child.stdout.on('data', (b: Buffer) => {
      const m = [...b.toString().matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)].at(-1);
      if (m && Number(m[1]) !== lastPct) {
        lastPct = Number(m[1]);
        clearTimeout(watch);
        watch = setTimeout(() => {
          stalledErr = stalled();
          child.kill('SIGKILL');
        }, stallMs);
      }
      if (m) onPct(Number(m[1]));
    });
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString();
    });
    const onAbort = (): void => {
      child.kill('SIGKILL');
    };
    signal.addEventListener('abort', onAbort, { once: true });
    child.on('exit', (code) => {
      clearTimeout(watch);
      signal.removeEventListener('abort', onAbort);
      if (stalledErr) return reject(stalledErr);
      if (signal.aborted) return reject(new AbortedError('copy the disks', signal.reason));
      if (code === 0) return resolve();
      reject(
        new FerryError(
          'E_COPY_FAILED',
          `Cannot copy a disk: qemu-img failed (${err.trim().split('\n').slice(-2).join(' / ') || `exit ${code}`})`,
        ),
      );
    });
  });
}
