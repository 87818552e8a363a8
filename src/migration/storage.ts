// Storage migration on one host (QEMU-NOTES §C): a running VM's disks are mirrored to their
// new place, pivoted, the config updated, then the old files deleted; a stopped VM's disks
// are copied with qemu-img. The config, checkpoint and paging folders move too. On any
// failure the VM keeps its old files and the half-written new ones are removed.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { convertImage, createImage, imageInfo, type ImageFormat } from '../qemu/img.js';
import type { QemuProcess } from '../qemu/process.js';
import { saveVm, configFile, exists } from '../vm/folder.js';
import { supportsDirectIo } from '../vm/lifecycle.js';
import { resolveVmFile, type VmSpec } from '../vm/spec.js';
import type { PoolDef } from '../storage/pools.js';
import { poolOf } from '../storage/pools.js';
import {
  addImageNode,
  abandonMirrors,
  delNode,
  finishMirrors,
  rootNode,
  startMirror,
  waitMirrorsReady,
  type MirrorSpec,
} from './block.js';
import { copyEta } from './progress.js';
import { foldMirrorProgress, type Job } from './job.js';
import { testHold } from './policy.js';

export interface StoragePlan {
  configPath: string;
  checkpointPath: string;
  pagingPath: string;
  /** disk id → new path (only disks that move) */
  disks: Record<string, string>;
}

export interface StorageContext {
  job: Job;
  spec: VmSpec;
  proc: QemuProcess | null;
  plan: StoragePlan;
  pools: PoolDef[];
  bandwidthBps?: number;
  /** The new spec is saved: tell the registry where the VM's folder is now. */
  onConfigMoved: (spec: VmSpec) => void;
}

/** Files of the VM folder that are not disks and not vm.json (kernel, initrd, …). */
export async function folderFiles(spec: VmSpec): Promise<string[]> {
  const disks = new Set(spec.disks.map((d) => path.resolve(d.path)));
  const out: string[] = [];
  for (const ent of await fsp.readdir(spec.configPath, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(spec.configPath, ent.name);
    if (ent.isFile() && ent.name !== 'vm.json' && !ent.name.startsWith('vm.json.tmp') && !disks.has(p))
      out.push(ent.name);
  }
  return out;
}

export async function runStorageMove(ctx: StorageContext): Promise<void> {
  const { job, spec, proc, plan } = ctx;
  const r = job.record;
  const moving = spec.disks.filter((d) => plan.disks[d.id] && path.resolve(plan.disks[d.id]!) !== path.resolve(d.path));
  const created: string[] = [];
  const createdDirs: string[] = [];
  const mirrors: MirrorSpec[] = [];
  const targets: string[] = [];
  const newNodes: Record<string, string> = {};
  const oldNodes: Record<string, string> = {};
  const configMoves = path.resolve(plan.configPath) !== path.resolve(spec.configPath);
  try {
    job.setState(
      'preparing',
      `planning: ${moving.length} disk(s)${configMoves ? ' and the config folder' : ''} to move`,
    );
    await testHold('preparing', (m) => job.log(m), job.signal);
    for (const dir of new Set([
      plan.configPath,
      plan.checkpointPath,
      plan.pagingPath,
      ...moving.map((d) => path.dirname(plan.disks[d.id]!)),
    ])) {
      if (!(await exists(dir))) {
        await fsp.mkdir(dir, { recursive: true });
        createdDirs.push(dir);
      }
    }
    r.disks = [];
    for (const d of moving) {
      const dest = plan.disks[d.id]!;
      if (await exists(dest))
        throw new FerryError(
          'E_DEST_PATH',
          `Cannot move disk '${d.id}' of VM '${spec.name}' to ${dest}: a file is already there; choose another path or remove it`,
          {},
        );
      const info = await imageInfo(d.path, { forceShare: true, format: d.format });
      r.disks.push({ id: d.id, source: d.path, destination: dest, bytesDone: 0, bytesTotal: info.actualSizeBytes });
    }
    job.setState('copying-storage', `copying ${moving.length} disk(s)`);
    if (proc) {
      for (const d of moving) {
        const dest = plan.disks[d.id]!;
        created.push(dest);
        const info = await imageInfo(d.path, { forceShare: true, format: d.format });
        await createImage(dest, d.format as ImageFormat, info.virtualSizeBytes, { signal: job.signal });
        const base = `${d.id}-m${Date.now().toString(36)}`;
        await addImageNode(proc.qmp, base, dest, d.format, d.cache === 'none' && supportsDirectIo(dest), job.signal);
        targets.push(base, `${base}-file`);
        newNodes[d.id] = base;
        oldNodes[d.id] = await rootNode(proc.qmp, d.id, job.signal);
        const m = { jobId: `copy-${d.id}`, diskId: d.id, device: oldNodes[d.id]!, target: base };
        await startMirror(proc.qmp, m, ctx.bandwidthBps, job.signal);
        mirrors.push(m);
      }
      const t0 = Date.now();
      await waitMirrorsReady(
        proc.qmp,
        mirrors,
        (ps) => {
          const { done, total, rate } = foldMirrorProgress(r, ps, t0);
          r.progress = Math.max(r.progress, Math.min(0.95, total ? 0.05 + 0.9 * (done / total) : 0.05));
          r.etaSeconds = copyEta(total - done, rate);
          job.flush();
        },
        { signal: job.signal, timeoutMs: 6 * 3600_000 },
      );
      // Switch the guest to the copies: no cancel from here on.
      job.cancellable = false;
      job.setState('switching-over', 'all copies ready: switching the disks over');
      await testHold('switching-over', (m) => job.log(m));
      await finishMirrors(proc.qmp, mirrors, true);
      mirrors.length = 0;
      // The guest writes to the new files now: they are never removed on a later failure.
      for (const d of moving) created.splice(created.indexOf(plan.disks[d.id]!), 1);
      targets.length = 0;
      for (const d of moving) {
        await delNode(proc.qmp, oldNodes[d.id]!);
        await delNode(proc.qmp, `${oldNodes[d.id]!}-file`);
      }
    } else {
      for (const [i, d] of moving.entries()) {
        const dest = plan.disks[d.id]!;
        created.push(dest);
        await convertImage(d.path, dest, {
          srcFormat: d.format as ImageFormat,
          dstFormat: d.format as ImageFormat,
          signal: job.signal,
        });
        const disk = r.disks[i]!;
        disk.bytesDone = disk.bytesTotal;
        r.bytesTransferred += disk.bytesTotal;
        r.progress = Math.max(r.progress, 0.05 + 0.9 * ((i + 1) / moving.length));
        job.flush();
      }
      job.cancellable = false;
      job.setState('switching-over', 'copies done: switching the config over');
    }

    // The new config: disk paths and pools, folders.
    const next: VmSpec = structuredClone(spec);
    for (const d of next.disks) {
      const dest = plan.disks[d.id];
      if (dest && moving.some((m) => m.id === d.id)) {
        d.path = dest;
        const pool = poolOf(ctx.pools, dest);
        if (pool) d.pool = pool.name;
        else delete d.pool;
      }
    }
    next.configPath = plan.configPath;
    next.checkpointPath = plan.checkpointPath;
    next.pagingPath = plan.pagingPath;
    const oldFiles = configMoves ? await folderFiles(spec) : [];
    for (const f of oldFiles) {
      const to = path.join(plan.configPath, f);
      await fsp.copyFile(path.join(spec.configPath, f), to);
      created.push(to);
    }
    if (configMoves && spec.boot.kind === 'kernel') {
      // Relative kernel paths follow the folder; absolute ones inside it are rewritten.
      for (const k of ['kernel', 'initrd'] as const) {
        const p = next.boot.kind === 'kernel' ? next.boot[k] : undefined;
        if (p && path.isAbsolute(p) && p.startsWith(spec.configPath + '/'))
          (next.boot as Record<string, unknown>)[k] = path.relative(spec.configPath, p);
      }
    }
    await saveVm(next);
    created.length = 0; // committed: the new files are the VM's now
    ctx.onConfigMoved(next);

    // Only now delete what the VM no longer uses.
    for (const d of moving) await fsp.rm(d.path, { force: true });
    if (configMoves) {
      await fsp.rm(configFile(spec.configPath), { force: true });
      for (const f of oldFiles) await fsp.rm(resolveVmFile(spec, f), { force: true });
    }
    for (const dir of new Set([spec.checkpointPath, spec.pagingPath, spec.configPath])) {
      if (![next.configPath, next.checkpointPath, next.pagingPath].includes(dir))
        await fsp.rmdir(dir).catch(() => undefined);
    }
    r.progress = 1;
  } catch (err) {
    if (proc && !proc.hasExited) await abandonMirrors(proc.qmp, mirrors, targets);
    for (const f of created) await fsp.rm(f, { force: true });
    for (const d of createdDirs.reverse()) await fsp.rmdir(d).catch(() => undefined);
    throw err;
  }
}
