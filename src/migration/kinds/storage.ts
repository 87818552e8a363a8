// Storage migration on one host (QEMU-NOTES §C): a running VM's disks are mirrored to their new
// place and pivoted, a stopped VM's are copied with qemu-img; then vm.json is updated and the
// old files deleted. The config, checkpoint and paging folders move too. Steps:
//   queued          slot
//   preparing       dirs → check
//   copying-storage mirror (running) | backup (running, resumable) | convert (stopped)
//   switching-over  pivot (running) | switch (running, resumable) → commit → cleanup
// The resumable copy (`--resumable`, storage-resume.ts) keeps a cut copy for a retry.
// Destination files are created exclusively (O_EXCL) and only what this move created is ever
// removed, so two moves into one folder cannot delete each other's files. A failure before
// switch-over removes the new files; in switch-over `resolve` keeps, per disk, the file the
// VM really uses (QEMU says which) and makes vm.json say the same.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, messageOf } from '../../errors.js';
import { imageInfo } from '../../qemu/img.js';
import { convertHeld } from '../../qemu/img-files.js';
import { checkOpenedFiles } from '../../qemu/opened-files.js';
import { probeImage } from '../../vm/image.js';
import { poolOf } from '../../storage/pools.js';
import { configFile, exists, loadVm, saveVm } from '../../vm/folder.js';
import { supportsDirectIo } from '../../vm/lifecycle.js';
import { resolveVmFile, type VmSpec } from '../../vm/spec.js';
import {
  abandonMirrors,
  addImageNode,
  newImage,
  delNode,
  finishMirrors,
  diskRoot,
  syncOntoNew,
  startMirror,
  waitMirrorsReady,
  type MirrorSpec,
} from '../block.js';
import { folderFiles } from '../plan.js';
import { testHold } from '../policy.js';
import { copyEta, foldMirrorProgress } from '../progress.js';
import { claimFile, makeFolders, poolRoots, removeFolders } from '../claim.js';
import { dropNodesOf } from '../../checkpoint/block.js';
import { TREE_FILE } from '../../checkpoint/model.js';
import { copyChainFile, saveMovedTree } from '../../checkpoint/relocate.js';
import type { MoveKind, Resolution, Step, StepData, UndoScope } from '../runner.js';
import { moving, type StorageCtx } from './storage-ctx.js';
import { dropLeftBehind, dropStoredLeftBehind, droppedLine } from '../resume-bitmaps.js';
import {
  dropKeptCopies,
  dropStorageBitmap,
  plannedResumable,
  resumableJournal,
  resumableStorage,
  resumePaused,
  storageBackup,
  storageBitmapOf,
  storageCloseDisks,
  storageOpenDisks,
  storageSwitch,
} from './storage-resume.js';

export type { StorageCtx } from './storage-ctx.js';

const configMoves = (ctx: StorageCtx): boolean =>
  path.resolve(ctx.plan.configPath) !== path.resolve(ctx.spec.configPath);

const slot: Step<StorageCtx> = {
  name: 'slot',
  phase: 'queued',
  async run(ctx, s) {
    if (!ctx.slots.tryAcquire(ctx.job.id)) {
      ctx.job.enter(
        'queued',
        `queued: ${ctx.host.name} runs ${ctx.host.settings().maxStorage} storage migrations (max storage)`,
      );
      await ctx.slots.acquire(ctx.job.id, ctx.job.record.priority, s.signal);
    }
    return undefined;
  },
  release(ctx) {
    ctx.slots.release(ctx.job.id);
  },
};

/** Every missing folder, one level at a time, each journalled before it is made. */
const dirs: Step<StorageCtx> = {
  name: 'dirs',
  phase: 'preparing',
  async run(ctx, s) {
    const m = moving(ctx);
    ctx.job.enter(
      'preparing',
      `planning: ${m.length} disk(s)${configMoves(ctx) ? ' and the config folder' : ''} to move`,
    );
    await testHold('preparing', s.log, s.signal);
    const p = ctx.plan;
    // The plan and the spec as they were: recovery after a restart works from these.
    s.record({ plan: p, spec: ctx.spec, created: [] });
    const dirs = [
      p.configPath,
      p.checkpointPath,
      p.pagingPath,
      ...m.map((d) => path.dirname(p.disks[d.id] ?? d.path)),
      ...(p.chain ? [p.chain.to, ...p.chain.files.map((f) => path.dirname(f.to))] : []),
    ];
    const created = await makeFolders(poolRoots(ctx.host.pools()), dirs, (c) => {
      s.record({ plan: p, spec: ctx.spec, created: c });
    });
    return { plan: p, spec: ctx.spec, created };
  },
  async undo(ctx, data) {
    await removeFolders(
      poolRoots(ctx.host.pools()),
      Array.isArray(data.created) ? data.created.filter((x) => typeof x === 'string') : [],
    );
  },
};

const check: Step<StorageCtx> = {
  name: 'check',
  phase: 'preparing',
  async run(ctx, s) {
    const r = ctx.job.record;
    await dropEarlier(ctx, s.log, s.signal);
    r.disks = [];
    for (const d of moving(ctx)) {
      const info = await imageInfo(d.path, { forceShare: true, format: d.format });
      r.disks.push({
        id: d.id,
        source: d.path,
        destination: ctx.plan.disks[d.id] ?? d.path,
        bytesDone: 0,
        bytesTotal: info.actualSizeBytes,
      });
    }
    ctx.job.enter('copying-storage', `copying ${r.disks.length} disk(s)`);
    return undefined;
  },
};

async function removeCreated(data: StepData): Promise<void> {
  for (const f of (data.created as string[] | undefined) ?? []) await fsp.rm(f, { force: true });
}

/**
 * The checkpoint chain's read-only layers and memory files, copied to the new folder (they never
 * change, also while the VM runs) with their backing references rewritten onto the copies.
 */
const chain: Step<StorageCtx> = {
  name: 'chain',
  phase: 'copying-storage',
  when: (ctx) => ctx.plan.chain !== undefined,
  async run(ctx, s) {
    const files = ctx.plan.chain?.files ?? [];
    ctx.job.log(`copying the checkpoint chain: ${files.length} file(s) to ${ctx.plan.chain?.to ?? ''}`);
    const created: string[] = [];
    const pools = ctx.host.pools();
    for (const f of files) {
      await claimFile(poolRoots(pools), f.to, 'a checkpoint file of the moved VM', {
        claimed: () => {
          created.push(f.to);
          s.record({ created });
        },
        fill: (fd) => copyChainFile(f, fd, { pools, signal: s.signal }),
      });
    }
    return { created };
  },
  async undo(_ctx, data) {
    await removeCreated(data);
  },
};

/**
 * Begin: what cut copies of earlier moves left that this move does not resume goes — bitmaps
 * of Ferry's naming but this move's own (resume-bitmaps.ts), and kept copies unless this move
 * may take them over. Never fails the move: what is left is only a cost (the sweeps get it).
 */
async function dropEarlier(ctx: StorageCtx, log: (m: string) => void, signal: AbortSignal): Promise<void> {
  const { spec } = ctx;
  // Planned, not running yet: a stopped VM's daemon opens its disks after this.
  const resumable = plannedResumable(ctx);
  const why = resumable
    ? 'a storage move resumes only its own'
    : `this move does not resume a copy (${ctx.plan.copy?.method ?? 'mirror'})`;
  try {
    const dropped = ctx.proc
      ? await dropLeftBehind(
          ctx.proc.qmp,
          ctx.host.dataDir,
          spec.id,
          resumable ? storageBitmapOf(spec.id, ctx.host.name) : null,
          { signal },
        )
      : await dropStoredLeftBehind(
          spec.disks,
          ctx.host.dataDir,
          spec.id,
          resumable ? storageBitmapOf(spec.id, ctx.host.name) : null,
          { pools: ctx.host.pools(), signal },
        );
    if (dropped.length) log(droppedLine(dropped, why));
    if (!resumable)
      for (const f of await dropKeptCopies(ctx.host.dataDir, spec))
        log(`removed the partial copy ${f} of a cut move: ${why}`);
  } catch (err) {
    log(`removing what earlier cut copies left: ${messageOf(err)}`);
  }
}

const mirror: Step<StorageCtx> = {
  name: 'mirror',
  phase: 'copying-storage',
  when: (ctx) => ctx.proc !== null && !resumableStorage(ctx),
  async run(ctx, s) {
    const proc = ctx.proc;
    if (!proc) throw new FerryError('E_VM_NOT_RUNNING', `Cannot mirror the disks of VM '${ctx.spec.name}': it stopped`);
    const r = ctx.job.record;
    const created: string[] = [];
    const nodes: string[] = [];
    const mirrors: MirrorSpec[] = [];
    const olds: Record<string, string> = {};
    const bandwidth = r.policy.bandwidthMiBps ? r.policy.bandwidthMiBps * 1024 * 1024 : undefined;
    for (const d of moving(ctx)) {
      const dest = ctx.plan.disks[d.id] ?? d.path;
      // An active layer over a checkpoint chain: a new overlay on the copied chain, only the top mirrored.
      const backing = ctx.plan.chain?.actives[d.id]?.backing ?? null;
      // The backing is named, not opened (qemu-img would read it by path): the size is the disk's,
      // as the guest's QEMU has it open (no qemu-img spawned: ~10 ms of a sparse disk's ~0.2 s copy).
      const root = await diskRoot(proc.qmp, d.id, s.signal);
      const size = root.virtualSizeBytes;
      const img = newImage(dest, backing ? 'qcow2' : d.format, size, {
        inQemu: true,
        signal: s.signal,
        ...(backing ? { backing, unsafeBacking: true } : {}),
      });
      await claimFile(poolRoots(ctx.host.pools()), dest, 'a disk of the moved VM', {
        claimed: () => {
          created.push(dest);
          s.record({ created, nodes, mirrors, olds });
        },
        ...img.claim,
      });
      const base = `${d.id}-m${Date.now().toString(36)}`;
      nodes.push(`${base}-file`, base);
      s.record({ created, nodes, mirrors, olds });
      const held = { pid: proc.pid, pools: ctx.host.pools(), vm: ctx.spec.name, host: ctx.host.name };
      await addImageNode(proc.qmp, base, dest, d.format, d.cache === 'none' && supportsDirectIo(dest), {
        signal: s.signal,
        held,
        createQcow2Bytes: img.createQcow2Bytes,
      });
      // QEMU opened the copied chain under the new overlay from its headers: the files the agent made, or refused.
      const chainTo = ctx.plan.chain?.to;
      if (backing && chainTo) {
        const all = await proc.qmp.execute('query-named-block-nodes', { flat: true }, { signal: s.signal });
        const copies = all.map((n) => n.file).filter((f) => f.startsWith(chainTo + path.sep));
        await checkOpenedFiles(proc.pid, [...new Set(copies)], held.pools, { ...held, signal: s.signal });
      }
      olds[d.id] = root.node;
      const m: MirrorSpec = {
        jobId: `copy-${d.id}`,
        diskId: d.id,
        device: root.node,
        target: base,
        // The image was made just now (claimFile: exclusively, never over an existing one).
        sync: backing ? 'top' : syncOntoNew(root.backingDepth, d.format),
      };
      mirrors.push(m);
      s.record({ created, nodes, mirrors, olds });
      await startMirror(proc.qmp, m, bandwidth, s.signal);
    }
    const t0 = Date.now();
    await waitMirrorsReady(
      proc.qmp,
      mirrors,
      (ps) => {
        const { done, total, rate } = foldMirrorProgress(r, ps, t0);
        r.progress = Math.max(r.progress, Math.min(0.95, total ? 0.05 + 0.9 * (done / total) : 0.05));
        r.etaSeconds = copyEta(total - done, rate);
        ctx.job.flush();
      },
      { signal: s.signal, timeoutMs: 6 * 3600_000 },
    );
    return { created, nodes, mirrors, olds };
  },
  async undo(ctx, data) {
    const proc = ctx.proc;
    if (proc && !proc.hasExited) {
      const nodes = [...((data.nodes as string[] | undefined) ?? [])].reverse(); // format node before its file node
      await abandonMirrors(proc.qmp, (data.mirrors as MirrorSpec[] | undefined) ?? [], nodes);
    }
    await removeCreated(data);
  },
};

const convert: Step<StorageCtx> = {
  name: 'convert',
  phase: 'copying-storage',
  // A stopped VM's resumable copy runs the backup step through a disk daemon instead.
  when: (ctx) => ctx.proc === null && !plannedResumable(ctx),
  async run(ctx, s) {
    const r = ctx.job.record;
    const created: string[] = [];
    const m = moving(ctx);
    for (const [i, d] of m.entries()) {
      const dest = ctx.plan.disks[d.id] ?? d.path;
      const pools = ctx.host.pools();
      const backing = ctx.plan.chain?.actives[d.id]?.backing ?? null;
      const what = `a disk of VM '${ctx.spec.name}'`;
      // Read as checked: the disk's chain pinned, each file through a handle (qemu/img-files.ts).
      const chain = backing
        ? null
        : (await probeImage(d.path, { pools, host: ctx.host.name, what, format: d.format, signal: s.signal })).chain;
      await claimFile(poolRoots(pools), dest, 'a disk of the moved VM', {
        claimed: () => {
          created.push(dest);
          s.record({ created });
        },
        fill: (fd) =>
          chain
            ? convertHeld(
                chain,
                fd,
                { path: dest, format: d.format, sizeBytes: chain[0]?.virtualSizeBytes ?? 0 },
                {
                  pools,
                  what,
                  signal: s.signal,
                },
              )
            : // An active layer over a checkpoint chain is copied as the overlay it is, onto the copied chain.
              copyChainFile({ from: d.path, to: dest, format: 'qcow2', backing }, fd, { pools, signal: s.signal }),
      });
      const disk = r.disks[i];
      if (disk) {
        disk.bytesDone = disk.bytesTotal;
        r.bytesTransferred += disk.bytesTotal;
      }
      r.progress = Math.max(r.progress, 0.05 + 0.9 * ((i + 1) / m.length));
      ctx.job.flush();
    }
    return { created };
  },
  async undo(_ctx, data) {
    await removeCreated(data);
  },
};

/** The guest switches to the copies (block-job-complete); from here the new files are the VM's. */
const pivot: Step<StorageCtx> = {
  name: 'pivot',
  phase: 'switching-over',
  when: (ctx) => ctx.proc !== null && !resumableStorage(ctx),
  async run(ctx, s) {
    const proc = ctx.proc;
    if (!proc) return undefined;
    ctx.job.enter('switching-over', 'all copies ready: switching the disks over');
    await testHold('switching-over', s.log);
    const started = ctx.job.journalData('mirror');
    await finishMirrors(proc.qmp, (started.mirrors as MirrorSpec[] | undefined) ?? [], true);
    for (const old of Object.values((started.olds as Record<string, string> | undefined) ?? {})) {
      await delNode(proc.qmp, old);
      await delNode(proc.qmp, `${old}-file`);
    }
    const ch = ctx.plan.chain;
    if (ch) await dropNodesOf(proc.qmp, new Set(ch.files.map((f) => f.from)));
    return undefined;
  },
};

/** The new vm.json: disk paths and pools, folders; folder files copied first. */
const commit: Step<StorageCtx> = {
  name: 'commit',
  phase: 'switching-over',
  async run(ctx, s) {
    if (ctx.proc === null) ctx.job.enter('switching-over', 'copies done: switching the config over');
    const next = nextSpec(ctx, new Set(moving(ctx).map((d) => d.id)));
    const copied: string[] = [];
    if (configMoves(ctx)) {
      // Base images of checkpoints in the folder were copied with their chain.
      const chained = new Set(ctx.plan.chain?.files.map((f) => path.resolve(f.from)) ?? []);
      for (const f of await folderFiles(ctx.spec)) {
        if (chained.has(path.resolve(ctx.spec.configPath, f))) continue;
        const to = path.join(ctx.plan.configPath, f);
        copied.push(to);
        s.record({ copied });
        await fsp.copyFile(path.join(ctx.spec.configPath, f), to, fsp.constants.COPYFILE_EXCL);
      }
      if (await exists(configFile(next.configPath))) {
        throw new FerryError(
          'E_DEST_PATH',
          `Cannot move the config of VM '${ctx.spec.name}': ${next.configPath} already holds a VM`,
        );
      }
    }
    if (ctx.plan.chain) {
      // The tree first: once vm.json names the new folder, the tree must be there.
      copied.push(path.join(ctx.plan.chain.to, TREE_FILE));
      s.record({ copied });
      await saveMovedTree(ctx.spec, ctx.plan.chain, ctx.plan.checkpointPath);
    }
    await saveVm(next);
    ctx.host.vms.configMoved(ctx.spec.name, next.configPath);
    await ctx.host.cluster()?.recordHa(next);
    return { copied, committed: true };
  },
  async undo(_ctx, data) {
    for (const f of (data.copied as string[] | undefined) ?? []) await fsp.rm(f, { force: true });
  },
};

/** Only now delete what the VM no longer uses. */
const cleanup: Step<StorageCtx> = {
  name: 'cleanup',
  phase: 'switching-over',
  async run(ctx) {
    await deleteOld(ctx, new Set(moving(ctx).map((d) => d.id)));
    ctx.job.record.progress = 1;
    return undefined;
  },
};

function nextSpec(ctx: StorageCtx, moved: Set<string>, folders = true): VmSpec {
  const { spec, plan } = ctx;
  const next: VmSpec = structuredClone(spec);
  for (const d of next.disks) {
    const dest = plan.disks[d.id];
    if (dest && moved.has(d.id)) {
      d.path = dest;
      const pool = poolOf(ctx.host.pools(), dest);
      if (pool) d.pool = pool.name;
      else delete d.pool;
    }
  }
  if (!folders) return next;
  next.configPath = plan.configPath;
  next.checkpointPath = plan.checkpointPath;
  next.pagingPath = plan.pagingPath;
  if (configMoves(ctx) && spec.boot.kind === 'kernel' && next.boot.kind === 'kernel') {
    // Relative kernel paths follow the folder; absolute ones inside it are rewritten.
    const boot = next.boot;
    for (const k of ['kernel', 'initrd'] as const) {
      const p = boot[k];
      if (p && path.isAbsolute(p) && p.startsWith(spec.configPath + '/')) boot[k] = path.relative(spec.configPath, p);
    }
  }
  return next;
}

async function deleteOld(ctx: StorageCtx, moved: Set<string>): Promise<void> {
  const { spec, plan } = ctx;
  for (const d of spec.disks) if (moved.has(d.id)) await fsp.rm(d.path, { force: true });
  if (plan.chain) {
    // The old chain: the folder (tree, overlays, memory) and the base images that moved.
    for (const f of plan.chain.files) await fsp.rm(f.from, { force: true });
    await fsp.rm(plan.chain.from, { recursive: true, force: true });
  }
  if (configMoves(ctx)) {
    await fsp.rm(configFile(spec.configPath), { force: true });
    for (const f of await folderFiles(spec)) await fsp.rm(resolveVmFile(spec, f), { force: true });
  }
  const kept = [plan.configPath, plan.checkpointPath, plan.pagingPath];
  for (const dir of new Set([spec.checkpointPath, spec.pagingPath, spec.configPath])) {
    if (!kept.includes(dir)) await fsp.rmdir(dir).catch(() => undefined);
  }
}

/**
 * A failure in switch-over (or an agent restart there). Per disk, the file the VM really uses
 * wins: a running VM's QEMU says which; a stopped VM's vm.json does. vm.json is made to say
 * the same, and the other copy of each disk is deleted.
 */
async function resolveStorage(ctx: StorageCtx, _err: unknown, s: UndoScope): Promise<Resolution> {
  const m = moving(ctx);
  const pivoted = new Set<string>();
  const resumable = resumableStorage(ctx);
  if (ctx.proc && !ctx.proc.hasExited) {
    const qmp = ctx.proc.qmp;
    await resumePaused(ctx, s.log);
    const started = resumable ? resumableJournal(ctx) : ctx.job.journalData('mirror');
    // Mirrors still READY (not pivoted) are cancelled; pivoted ones are concluded and dismissed.
    await abandonMirrors(qmp, (started.mirrors as MirrorSpec[] | undefined) ?? [], []).catch(() => undefined);
    for (const b of await qmp.execute('query-block', undefined, { timeoutMs: 5000 })) {
      const d = m.find((x) => b.qdev === x.id || b.qdev?.includes(`/${x.id}/`));
      if (d && b.inserted?.file === ctx.plan.disks[d.id]) pivoted.add(d.id);
    }
    // Nodes of copies that never became the guest's disk, and the old nodes of those that did.
    const olds = (started.olds as Record<string, string> | undefined) ?? {};
    for (const n of [...((started.nodes as string[] | undefined) ?? [])].reverse()) {
      if (![...pivoted].some((id) => n.startsWith(`${id}-m`))) await delNode(qmp, n);
    }
    for (const id of pivoted) {
      const old = olds[id];
      if (old) {
        await delNode(qmp, old);
        await delNode(qmp, `${old}-file`);
      }
    }
  } else {
    const saved = await loadVm(ctx.plan.configPath).catch(() => loadVm(ctx.spec.configPath));
    for (const d of m) if (saved.disks.find((x) => x.id === d.id)?.path === ctx.plan.disks[d.id]) pivoted.add(d.id);
    if (pivoted.size === 0) return 'undo';
  }
  const committed = ctx.job.journalData('commit').committed === true;
  if (pivoted.size === m.length && committed) {
    await deleteOld(ctx, pivoted);
    if (resumable) await dropStorageBitmap(ctx);
    s.log('every disk had switched and the config was saved: the move completed');
    return 'completed';
  }
  if (pivoted.size === 0) return 'undo';
  // Nothing resumes a copy some of whose disks switched.
  if (resumable) await dropStorageBitmap(ctx);
  // Some disks switched: they keep their new place (the guest writes there), the rest stay.
  const next = nextSpec(ctx, pivoted, false);
  await saveVm(next);
  for (const d of m) {
    if (pivoted.has(d.id)) {
      await fsp.rm(d.path, { force: true });
      s.log(`disk ${d.id} had switched to ${ctx.plan.disks[d.id] ?? ''}: kept`);
    } else {
      await fsp.rm(ctx.plan.disks[d.id] ?? '', { force: true });
      s.log(`disk ${d.id}: the copy was removed; it stays at ${d.path}`);
    }
  }
  await ctx.host.cluster()?.recordHa(next);
  return 'failed';
}

export const storageKind: MoveKind<StorageCtx> = {
  name: 'storage',
  steps: [
    slot,
    dirs,
    check,
    storageOpenDisks,
    chain,
    mirror,
    storageBackup,
    storageCloseDisks,
    convert,
    pivot,
    storageSwitch,
    commit,
    cleanup,
  ],
  resolve: resolveStorage,
};
