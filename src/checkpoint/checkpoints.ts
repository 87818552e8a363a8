// Checkpoints of one VM on this host: take (running: disks and memory at one instant;
// stopped: disks), list, apply (back to that instant; the present state kept as a branch
// unless discarded), remove (its data merged into what depends on it, live when the VM runs).
// The caller (the VM inventory) holds the VM's gate and starts and stops its QEMU.
import { randomUUID } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { CheckpointList, CheckpointView } from '../api/schemas.js';
import { FerryError } from '../errors.js';
import { createImage, type ImageFormat } from '../qemu/img.js';
import { commitHeld, rebaseHeld, type Layer } from '../qemu/img-files.js';
import { probeImage } from '../vm/image.js';
import { checkOpenedFiles } from '../qemu/opened-files.js';
import type { PoolDef } from '../storage/pools.js';
import type { QemuProcess } from '../qemu/process.js';
import { rootNode } from '../migration/block.js';
import { saveVm } from '../vm/folder.js';
import type { DiskSpec, VmSpec } from '../vm/spec.js';
import { commitInto, nodeOfImage, streamInto } from './block.js';
import { loadMemory, saveMemory } from './memory.js';
import {
  assertNewName,
  branchName,
  byId,
  dependents,
  filesOf,
  findCheckpoint,
  imageOf,
  lineage,
  treeOrder,
  withoutCheckpoint,
  type CheckpointRecord,
  type CheckpointTree,
} from './model.js';
import { loadTree, saveTree, treeFolder } from './store.js';
import { letQemuThrough } from '../qemu/user.js';

export interface CheckpointDeps {
  /** The VM's QEMU while it runs. */
  proc: QemuProcess | null;
  /** The VM's runtime folder (the memory socket lives there). */
  runDir: string;
  /** Starts QEMU for the saved spec, paused, waiting for an incoming migration. */
  startIncoming(spec: VmSpec): Promise<QemuProcess>;
  /** The vCPUs of a QEMU started by startIncoming run now. */
  resumed(proc: QemuProcess): void;
  /** Quits the VM's QEMU (QEMU flushes its images first). */
  quit(proc: QemuProcess): Promise<void>;
  /** This host's pools and name: a running VM's new overlays must be the files the agent made (opened-files.ts). */
  pools: readonly PoolDef[];
  host: string;
  signal?: AbortSignal;
}

/**
 * A stopped VM's new overlay on `backing`: made in a file created here (exclusively: no link is
 * followed), its size from the backing's checked probe, so qemu-img opens no file by path.
 */
async function newOverlay(
  file: string,
  backing: { path: string; format: ImageFormat },
  spec: VmSpec,
  deps: CheckpointDeps,
): Promise<void> {
  const what = `an image of VM '${spec.name}'`;
  const probe = { pools: [...deps.pools], host: deps.host, what, format: backing.format, signal: deps.signal };
  await overlayFile(file, backing, (await probeImage(backing.path, probe)).virtualSizeBytes, deps.signal);
}

/**
 * An overlay on `backing` (named, not opened), `size` big, in a file created here exclusively
 * (no link followed) and QEMU's user's; gone again if it could not be made.
 */
async function overlayFile(
  file: string,
  backing: { path: string; format: ImageFormat },
  size: number,
  signal?: AbortSignal,
): Promise<void> {
  const fh = await fsp.open(file, 'wx', 0o600);
  let done = false;
  try {
    await createImage(file, 'qcow2', size, { fd: fh.fd, backing, unsafeBacking: true, signal });
    done = true;
  } finally {
    await fh.close();
    if (!done) await fsp.rm(file, { force: true });
  }
}

/** The disks a checkpoint covers: every writable disk but the UEFI variable store. */
export function checkpointDisks(spec: VmSpec): DiskSpec[] {
  return spec.disks.filter((d) => d.role !== 'uefi-vars' && !d.readOnly);
}

const rel = (folder: string, file: string): string => {
  const r = path.relative(folder, file);
  if (r.startsWith('..') || path.isAbsolute(r))
    throw new FerryError('E_INTERNAL', `The active image ${file} is not in the checkpoint folder ${folder}`);
  return r;
};

const tagOf = (): string => randomUUID().slice(0, 8);

/** A value the tree's invariants guarantee; its absence is a bug. */
function must<T>(v: T | undefined, what: string): T {
  if (v === undefined) throw new FerryError('E_INTERNAL', `The checkpoint tree lacks ${what}`);
  return v;
}

/** Bytes a file takes on disk (its allocated blocks; 0 if it is gone). */
export async function allocatedBytes(file: string): Promise<number> {
  return fsp.stat(file).then(
    (s) => s.blocks * 512,
    () => 0,
  );
}

export async function listCheckpoints(spec: VmSpec): Promise<CheckpointList> {
  const tree = await loadTree(spec);
  const folder = treeFolder(spec);
  const names = new Map(tree.checkpoints.map((c) => [c.id, c.name]));
  const out: CheckpointView[] = [];
  for (const n of treeOrder(tree)) {
    const c = byId(tree, n.id);
    const files = filesOf(c);
    let sizeBytes = 0;
    for (const f of files) sizeBytes += await allocatedBytes(path.join(folder, f));
    out.push({
      ...n,
      parentName: n.parent ? (names.get(n.parent) ?? null) : null,
      running: c.running,
      sizeBytes,
      files,
      baseDisks: Object.entries(c.disks).flatMap(([id, f]) => (f === null ? [tree.base[id]?.path ?? id] : [])),
      pauseMs: c.pauseMs,
      tookMs: c.tookMs,
    });
  }
  return { vm: spec.name, folder, current: tree.current ? (names.get(tree.current) ?? null) : null, checkpoints: out };
}

async function save(spec: VmSpec, tree: CheckpointTree): Promise<void> {
  await saveTree(spec, tree);
  await saveVm(spec);
}

/** The record of the present state (the VM's active images) as a checkpoint. */
function present(
  tree: CheckpointTree,
  folder: string,
  disks: DiskSpec[],
  name: string,
  extra: Pick<CheckpointRecord, 'memory' | 'running' | 'pauseMs' | 'tookMs'> & { id: string },
): CheckpointRecord {
  return {
    id: extra.id,
    name,
    parent: tree.current,
    created: new Date().toISOString(),
    disks: Object.fromEntries(disks.map((d) => [d.id, tree.current === null ? null : rel(folder, d.path)])),
    memory: extra.memory,
    running: extra.running,
    pauseMs: extra.pauseMs,
    tookMs: extra.tookMs,
  };
}

/** Each disk's active layer in QEMU: its node, size, and whether its file is opened with O_DIRECT. */
async function activeLayers<T extends { d: DiskSpec }>(
  qmp: QemuProcess['qmp'],
  overlays: readonly T[],
  signal?: AbortSignal,
): Promise<Array<T & { node: string; size: number; direct: boolean }>> {
  const all = await qmp.execute('query-named-block-nodes', { flat: true }, { signal, timeoutMs: 10_000 });
  return Promise.all(
    overlays.map(async (o) => {
      const node = await rootNode(qmp, o.d.id, signal);
      const n = all.find((x) => x['node-name'] === node);
      if (!n)
        throw new FerryError('E_BLOCK', `Cannot take a checkpoint of disk '${o.d.id}': QEMU has no node ${node}`, {
          context: { disk: o.d.id, node },
        });
      return { ...o, node, size: n.image['virtual-size'], direct: n.cache.direct };
    }),
  );
}

/**
 * Takes checkpoint `name`. Running VM: vCPUs stopped → memory saved to a file → every disk
 * gets a new external overlay (one transaction) → vCPUs resumed; the guest is paused only
 * for that. Stopped VM: a new overlay per disk. Failure leaves the VM as it was.
 */
export async function takeCheckpoint(spec: VmSpec, name: string, deps: CheckpointDeps): Promise<CheckpointView> {
  const t0 = Date.now();
  const tree = await loadTree(spec);
  assertNewName(tree, spec.name, name);
  const folder = treeFolder(spec);
  await fsp.mkdir(folder, { recursive: true });
  await letQemuThrough(folder);
  const disks = checkpointDisks(spec);
  const id = randomUUID();
  const tag = id.slice(0, 8);
  const overlays = disks.map((d) => ({ d, file: path.join(folder, `${d.id}-${tag}.qcow2`) }));
  if (tree.current === null) for (const d of disks) tree.base[d.id] = { path: d.path, format: d.format };
  const proc = deps.proc;
  let ck: CheckpointRecord;
  if (proc) {
    const qmp = proc.qmp;
    const memory = `${tag}.mem`;
    const wasRunning = (await qmp.execute('query-status', undefined, { signal: deps.signal })).running;
    const nodes = await activeLayers(qmp, overlays, deps.signal);
    const made: string[] = [];
    const added = new Map<string, string>(); // overlay file → its node
    const dropPrepared = async (): Promise<void> => {
      // Nodes no disk uses (before the transaction, or committed back) go with their files; a
      // node QEMU still writes (a commit back that failed) keeps its file: it holds the guest's writes.
      for (const f of made) {
        const node = added.get(f);
        const free =
          node === undefined ||
          (await qmp.execute('blockdev-del', { 'node-name': node }).then(
            () => true,
            () => false,
          ));
        if (free) await fsp.rm(f, { force: true });
      }
    };
    try {
      // While the guest runs on: each overlay is made by the agent in a file it created itself
      // (exclusively: no link is followed), backed by the active layer (the spec's file, as the
      // stopped VM's overlays below), and QEMU's user's; QEMU opens it as a node of its own,
      // which must be that very file (qemu/opened-files.ts), and only the snapshot below puts it
      // on top. A file swapped in a shared pool meanwhile never becomes the VM's disk (had QEMU
      // created the overlay by path, it would have truncated whatever a link there named).
      for (const o of nodes) {
        await overlayFile(o.file, { path: o.d.path, format: o.d.format }, o.size, deps.signal);
        made.push(o.file);
        const node = `ck-${o.d.id}-${tag}`;
        const cache = { direct: o.direct, 'no-flush': false };
        await qmp.execute(
          'blockdev-add',
          {
            driver: 'qcow2',
            'node-name': node,
            file: { driver: 'file', filename: o.file, 'node-name': `${node}-file`, cache },
            cache,
            backing: null,
          },
          { signal: deps.signal, timeoutMs: 30_000 },
        );
        added.set(o.file, node);
        await checkOpenedFiles(proc.pid, [o.file], deps.pools, { vm: spec.name, host: deps.host, signal: deps.signal });
      }
    } catch (err) {
      await dropPrepared();
      throw err;
    }
    const paused = Date.now();
    if (wasRunning) await qmp.execute('stop', undefined, { signal: deps.signal, timeoutMs: 10_000 });
    const resume = async (): Promise<void> => {
      if (wasRunning) await qmp.execute('cont', undefined, { timeoutMs: 10_000 });
    };
    try {
      // Disks first, all in one transaction (all or none), while the vCPUs are stopped.
      await qmp.execute(
        'transaction',
        {
          actions: nodes.map((o) => ({
            type: 'blockdev-snapshot' as const,
            data: { node: o.node, overlay: `ck-${o.d.id}-${tag}` },
          })),
        },
        { signal: deps.signal, timeoutMs: 30_000 },
      );
    } catch (err) {
      await resume().catch(() => undefined);
      await dropPrepared();
      throw err;
    }
    try {
      await saveMemory(qmp, path.join(folder, memory), path.join(deps.runDir, 'checkpoint.sock'), {
        signal: deps.signal,
      });
    } catch (err) {
      // Undo the overlays (nothing was written to them: the guest is stopped), then run on.
      for (const o of nodes)
        await commitInto(qmp, `ck-undo-${o.d.id}`, `ck-${o.d.id}-${tag}`, o.node, 'undo the checkpoint').catch(
          () => undefined,
        );
      await resume().catch(() => undefined);
      await dropPrepared(); // the committed-back overlays' nodes stay the monitor's (blockdev-add) until deleted
      throw err;
    }
    // The end of a migration leaves QEMU's images inactive: `cont` activates them again (a
    // VM that was paused is paused again at once).
    await qmp.execute('cont', undefined, { timeoutMs: 10_000 });
    if (!wasRunning) await qmp.execute('stop', undefined, { timeoutMs: 10_000 });
    const pauseMs = Date.now() - paused;
    ck = present(tree, folder, disks, name, { id, memory, running: wasRunning, pauseMs, tookMs: Date.now() - t0 });
  } else {
    for (const o of overlays) await newOverlay(o.file, { path: o.d.path, format: o.d.format }, spec, deps);
    ck = present(tree, folder, disks, name, {
      id,
      memory: null,
      running: false,
      pauseMs: null,
      tookMs: Date.now() - t0,
    });
  }
  tree.checkpoints.push(ck);
  tree.current = id;
  for (const o of overlays) Object.assign(o.d, { path: o.file, format: 'qcow2' });
  await save(spec, tree);
  return must(
    (await listCheckpoints(spec)).checkpoints.find((c) => c.id === id),
    `checkpoint ${id}`,
  );
}

/**
 * Returns the VM to checkpoint `name`: new overlays over its disk images, and (when it has
 * memory) QEMU started from its memory file, running if it was. The present state becomes a
 * branch checkpoint first (with memory when the VM runs) unless `discard`.
 */
export async function applyCheckpoint(
  spec: VmSpec,
  name: string,
  discard: boolean,
  deps: CheckpointDeps,
): Promise<{ checkpoint: string; branch: string | null; running: boolean }> {
  const t0 = Date.now();
  const tree = await loadTree(spec);
  const target = findCheckpoint(tree, spec.name, name, 'apply');
  const folder = treeFolder(spec);
  const disks = checkpointDisks(spec);
  const oldActive = disks.map((d) => d.path);
  let branch: CheckpointRecord | null = null;
  const id = randomUUID();
  const tag = id.slice(0, 8);
  const proc = deps.proc;
  if (proc) {
    const qmp = proc.qmp;
    const wasRunning = (await qmp.execute('query-status', undefined, { signal: deps.signal })).running;
    if (wasRunning) await qmp.execute('stop', undefined, { signal: deps.signal, timeoutMs: 10_000 });
    let memory: string | null = null;
    if (!discard) {
      memory = `${tag}.mem`;
      try {
        await saveMemory(qmp, path.join(folder, memory), path.join(deps.runDir, 'checkpoint.sock'), {
          signal: deps.signal,
        });
      } catch (err) {
        if (wasRunning) await qmp.execute('cont', undefined, { timeoutMs: 10_000 }).catch(() => undefined);
        throw err;
      }
    }
    await deps.quit(proc);
    if (!discard)
      branch = present(tree, folder, disks, branchName(tree, new Date()), {
        id,
        memory,
        running: wasRunning,
        pauseMs: null,
        tookMs: Date.now() - t0,
      });
  } else if (!discard) {
    branch = present(tree, folder, disks, branchName(tree, new Date()), {
      id,
      memory: null,
      running: false,
      pauseMs: null,
      tookMs: 0,
    });
  }
  const next = tagOf();
  for (const d of disks) {
    const file = path.join(folder, `${d.id}-${next}.qcow2`);
    await newOverlay(file, imageOf(tree, folder, target.id, d.id), spec, deps);
    Object.assign(d, { path: file, format: 'qcow2' });
  }
  if (branch) tree.checkpoints.push(branch);
  tree.current = target.id;
  await save(spec, tree);
  // Discarded: the old active images belong to no checkpoint (they are always overlays in the folder).
  if (discard)
    for (const f of oldActive) if (!path.relative(folder, f).startsWith('..')) await fsp.rm(f, { force: true });
  if (!target.memory) return { checkpoint: target.name, branch: branch?.name ?? null, running: false };
  const started = await deps.startIncoming(spec);
  try {
    await loadMemory(started.qmp, path.join(folder, target.memory), path.join(deps.runDir, 'checkpoint.sock'), {
      signal: deps.signal,
    });
    if (target.running) {
      await started.qmp.execute('cont', undefined, { timeoutMs: 10_000 });
      deps.resumed(started);
    }
  } catch (err) {
    await deps.quit(started).catch(() => undefined);
    throw new FerryError(
      'E_CHECKPOINT_MEMORY',
      `Cannot resume VM '${spec.name}' from checkpoint '${target.name}': its memory state did not load ` +
        `(${(err as Error).message}); its disks are at the checkpoint and it is stopped; start it to boot afresh`,
      { cause: err, context: { vm: spec.name, checkpoint: target.name } },
    );
  }
  return { checkpoint: target.name, branch: branch?.name ?? null, running: target.running };
}

/**
 * Removes checkpoint `name`, keeping every byte that depends on it. Not the first checkpoint:
 * its data is streamed into each image layered on it (block-stream while the VM runs that
 * image, `qemu-img rebase` otherwise), which then backs onto its parent. The first checkpoint
 * (its images are the VM's base disks): the one image layered on it is committed into the base
 * disks (block-commit live, `qemu-img commit` otherwise) and takes its place.
 */
export async function removeCheckpoint(spec: VmSpec, name: string, deps: CheckpointDeps): Promise<void> {
  const tree = await loadTree(spec);
  const x = findCheckpoint(tree, spec.name, name, 'remove');
  const folder = treeFolder(spec);
  const disks = checkpointDisks(spec);
  const qmp = deps.proc?.qmp ?? null;
  const live = new Set(qmp ? lineage(tree, tree.current).map((c) => c.id) : []);
  const deps_ = dependents(tree, x.id);
  const abs = (f: string): string => path.join(folder, f);
  /** The image file of a checkpoint that is not the first (the first's images are the base disks). */
  const imageFile = (c: CheckpointRecord, diskId: string): string =>
    abs(must(c.disks[diskId] ?? undefined, `the image of ${diskId} in ${c.name}`));
  const label = (c: CheckpointRecord | 'active'): string => (c === 'active' ? 'the present state' : c.name);
  const what = `remove checkpoint '${x.name}' of VM '${spec.name}'`;
  // A stopped VM's images are changed by qemu-img through handles, each chain as checked (img-files.ts).
  const held = { pools: deps.pools, what: `an image of VM '${spec.name}'`, signal: deps.signal };
  const chainOf = async (f: string, format: string): Promise<Layer[]> =>
    (await probeImage(f, { pools: [...deps.pools], host: deps.host, what: held.what, format, signal: deps.signal }))
      .chain;
  let next: CheckpointTree;
  if (x.parent === null) {
    if (deps_.length !== 1)
      throw new FerryError(
        'E_CHECKPOINT_BRANCHES',
        `Cannot ${what}: it is the first checkpoint (its disk images are the VM's own disks) and ` +
          `${deps_.length} states are built on it (${deps_.map(label).join(', ')}); ` +
          'remove or apply away from all but one of them first',
        { context: { vm: spec.name, checkpoint: x.name } },
      );
    const child = must(deps_[0], 'the child');
    for (const d of disks) {
      const base = must(tree.base[d.id], `the base of ${d.id}`);
      if (child === 'active') {
        const top = d.path;
        if (qmp)
          await commitInto(
            qmp,
            `ck-commit-${d.id}`,
            await rootNode(qmp, d.id),
            await nodeOfImage(qmp, base.path),
            what,
          );
        else await commitHeld(await chainOf(top, 'qcow2'), held);
        Object.assign(d, { path: base.path, format: base.format });
        await fsp.rm(top, { force: true });
        continue;
      }
      const img = imageFile(child, d.id);
      if (qmp && live.has(child.id)) {
        await commitInto(qmp, `ck-commit-${d.id}`, await rootNode(qmp, d.id), await nodeOfImage(qmp, base.path), what, {
          topNode: await nodeOfImage(qmp, img),
        });
      } else {
        await commitHeld(await chainOf(img, 'qcow2'), held);
        // What was layered on the committed image sees the same data in the base disk now.
        for (const g of dependents(tree, child.id)) {
          const f = g === 'active' ? d.path : imageFile(g, d.id);
          await rebaseHeld([{ path: f, format: 'qcow2' }], [base], { ...held, unsafe: true });
        }
      }
      await fsp.rm(img, { force: true });
    }
    next = withoutCheckpoint(tree, x.id);
    if (child !== 'active')
      next.checkpoints = next.checkpoints.map((c) =>
        c.id === child.id ? { ...c, disks: Object.fromEntries(Object.keys(c.disks).map((k) => [k, null])) } : c,
      );
  } else {
    for (const dep of deps_) {
      for (const d of disks) {
        const newBase = imageOf(tree, folder, x.parent, d.id);
        const top = dep === 'active' ? d.path : imageFile(dep, d.id);
        if (qmp && (dep === 'active' || live.has(dep.id))) {
          const topNode = dep === 'active' ? await rootNode(qmp, d.id) : await nodeOfImage(qmp, top);
          await streamInto(qmp, `ck-stream-${d.id}`, topNode, await nodeOfImage(qmp, newBase.path), what, deps.signal);
        } else {
          await rebaseHeld(await chainOf(top, 'qcow2'), await chainOf(newBase.path, newBase.format), held);
        }
      }
    }
    for (const d of disks) {
      const f = x.disks[d.id];
      if (f) await fsp.rm(abs(f), { force: true });
    }
    next = withoutCheckpoint(tree, x.id);
  }
  if (x.memory) await fsp.rm(abs(x.memory), { force: true });
  await save(spec, next);
}
