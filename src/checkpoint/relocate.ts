// A VM's checkpoint chain moved to a new checkpoint folder on the same host (storage moves):
// which files go where, the read-only layers copied (they never change, so a byte copy taken
// while the VM runs is exact) with their backing references rewritten onto the copies
// (`qemu-img rebase -u`: the data under them is the same), and the tree as it reads afterwards.
// The active layers are not copied here: a running VM's are mirrored with sync=top onto a new
// overlay whose backing is the copied chain (QEMU-NOTES §C, "keep chain, move it").
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { ImageFormat } from '../api/common.js';
import { FerryError } from '../errors.js';
import { chainFilename, withHeldFiles } from '../qemu/img-files.js';
import type { PoolDef } from '../storage/pools.js';
import { runWithFd } from '../util/exec.js';
import type { VmSpec } from '../vm/spec.js';
import { imageOf, TREE_DIR, type CheckpointTree } from './model.js';
import { loadTree, saveTree } from './store.js';
import { ownHandleForQemu } from '../qemu/user.js';

interface Image {
  path: string;
  format: ImageFormat;
}

/** A read-only file of the chain and where its copy goes; `backing`: the copy's new backing (qcow2 overlays). */
export interface ChainFile {
  from: string;
  to: string;
  format: ImageFormat | null;
  backing: Image | null;
}

export interface ChainPlan {
  /** The old and the new `checkpoints` folder. */
  from: string;
  to: string;
  /** disk id → the new path of the base image under the first checkpoint. */
  bases: Record<string, string>;
  /** The read-only layers and memory files, copied before the active layers move. */
  files: ChainFile[];
  /** disk id → the new active layer: its path and the (copied) image it is an overlay on; null: it is the base. */
  actives: Record<string, { to: string; backing: Image | null }>;
}

/**
 * The plan of a chain that moves with the VM's checkpoint folder to `checkpointPath`; base
 * images move to `basePath(old)` (the same path: they stay, unless `otherHost`: the chain goes
 * to another host, where even a base at the same path must be copied). Null without checkpoints.
 */
export async function planChainMove(
  spec: VmSpec,
  checkpointPath: string,
  basePath: (old: string) => string,
  otherHost = false,
): Promise<ChainPlan | null> {
  const tree = await loadTree(spec);
  if (tree.checkpoints.length === 0) return null;
  const from = path.join(spec.checkpointPath, TREE_DIR);
  const to = path.join(checkpointPath, TREE_DIR);
  const bases = Object.fromEntries(Object.entries(tree.base).map(([id, b]) => [id, path.resolve(basePath(b.path))]));
  const moved = movedTree(tree, bases);
  const files: ChainFile[] = [];
  const actives: ChainPlan['actives'] = {};
  const activePaths = new Set(spec.disks.map((d) => path.resolve(d.path)));
  for (const [id, b] of Object.entries(tree.base)) {
    const nb = bases[id] ?? b.path;
    // A base that is still the VM's active layer (no checkpoint on top of it) moves as a disk.
    if ((otherHost || nb !== path.resolve(b.path)) && !activePaths.has(path.resolve(b.path)))
      files.push({ from: b.path, to: nb, format: b.format, backing: null });
  }
  for (const c of tree.checkpoints) {
    for (const [id, f] of Object.entries(c.disks)) {
      if (f === null) continue;
      files.push({
        from: path.join(from, f),
        to: path.join(to, f),
        format: 'qcow2',
        backing: imageOf(moved, to, c.parent, id),
      });
    }
    if (c.memory)
      files.push({ from: path.join(from, c.memory), to: path.join(to, c.memory), format: null, backing: null });
  }
  for (const d of spec.disks) {
    const r = path.relative(from, d.path);
    if (!r.startsWith('..') && !path.isAbsolute(r)) {
      actives[d.id] = { to: path.join(to, r), backing: imageOf(moved, to, tree.current, d.id) };
    } else if (tree.base[d.id] && path.resolve(tree.base[d.id]?.path ?? '') === path.resolve(d.path)) {
      actives[d.id] = { to: bases[d.id] ?? d.path, backing: null };
    }
  }
  // Nothing in the chain is an active layer any more: those are copied or mirrored by the move.
  const act = new Set(Object.values(actives).map((a) => a.to));
  return { from, to, bases, files: files.filter((f) => !act.has(f.to)), actives };
}

/** The tree with its base images at their new paths (files in the folder are relative: unchanged). */
export function movedTree(tree: CheckpointTree, bases: Record<string, string>): CheckpointTree {
  return {
    ...tree,
    base: Object.fromEntries(Object.entries(tree.base).map(([id, b]) => [id, { ...b, path: bases[id] ?? b.path }])),
  };
}

/** The room a copy of the file takes (for the space check). */
export async function chainFileBytes(f: ChainFile): Promise<number> {
  return fsp.stat(f.from).then((s) => s.blocks * 512);
}

/**
 * Copies one read-only file of the chain into its claimed (empty) destination, open as `fd`
 * (migration/claim.ts), and points the copy at its new backing. The source is read through a
 * handle opened without links (QEMU has it open read-only); the copy is changed only through `fd`.
 */
export async function copyChainFile(
  f: ChainFile,
  fd: number,
  opts: { pools: readonly PoolDef[]; signal?: AbortSignal },
): Promise<void> {
  const what = 'a checkpoint file of the moved VM';
  const to = `/proc/self/fd/${fd}`;
  await withHeldFiles(opts.pools, [f.from], what, (_n, _fds, localOf) => fsp.copyFile(localOf(f.from), to));
  // QEMU opens the copy (the active layer read-write, a base when a commit writes into it).
  await ownHandleForQemu(to);
  if (f.backing && f.format) {
    const only = chainFilename([{ path: '/dev/fd/3', format: f.format }]);
    const args = ['rebase', '-q', '-u', '-b', f.backing.path, '-F', f.backing.format, only];
    await runWithFd('qemu-img', args, fd, { timeoutMs: 60_000, ...(opts.signal ? { signal: opts.signal } : {}) });
  }
}

/** Writes the tree into the new folder, base paths rewritten (before vm.json names the new folder). */
export async function saveMovedTree(spec: VmSpec, plan: ChainPlan, checkpointPath: string): Promise<void> {
  const tree = await loadTree(spec);
  if (tree.checkpoints.length === 0)
    throw new FerryError('E_CHECKPOINT_CORRUPT', `Cannot move the checkpoints of VM '${spec.name}': the tree is gone`);
  await saveTree({ checkpointPath }, movedTree(tree, plan.bases));
}
