// The checkpoint tree of one VM, as kept in `<checkpoint folder>/checkpoints/checkpoints.json`
// (pure: no file or QEMU access). Every file name in it is relative to that folder, so the
// folder can move as a whole; only the images under the oldest checkpoint (the VM's own disks
// before its first checkpoint) live elsewhere and are named by absolute path in `base`.
//
// Disk layout: each checkpoint C owns, per disk, the image that was the VM's active layer at
// C's instant (read-only from then on). Its backing file is the image of C's parent; the VM's
// active layer (its disk path in vm.json) is an overlay whose backing is the image of
// `current`, the checkpoint the VM's present state derives from.
import path from 'node:path';
import * as z from 'zod';
import { NAME_RE, IMAGE_FORMATS } from '../api/common.js';
import { FerryError, InvalidInputError, NotFoundError } from '../errors.js';

/** The folder (inside the VM's checkpoint path) that holds the tree and its files. */
export const TREE_DIR = 'checkpoints';
export const TREE_FILE = 'checkpoints.json';

const RelFile = z
  .string()
  .min(1)
  .refine((f) => !path.isAbsolute(f) && !f.split('/').includes('..'), { message: 'must be inside the folder' });

export const CheckpointRecord = z.object({
  id: z.string(),
  name: z.string().regex(NAME_RE),
  parent: z.string().nullable(),
  created: z.string(),
  /** disk id → the image holding the disk at this instant: a file in the folder, or null for the base image. */
  disks: z.record(z.string(), RelFile.nullable()),
  /** The saved memory and device state (QEMU's migration stream), or null for a disk-only checkpoint. */
  memory: RelFile.nullable(),
  /** The vCPUs were running when it was taken (applying it resumes them); false: paused. */
  running: z.boolean(),
  /** How long the guest was paused to take it, and how long taking it lasted. */
  pauseMs: z.number().nullable(),
  tookMs: z.number(),
});
export type CheckpointRecord = z.infer<typeof CheckpointRecord>;

export const CheckpointTree = z.object({
  version: z.literal(1),
  vmId: z.string(),
  /** The images under the first checkpoint: the VM's disks as they were (absolute paths). */
  base: z.record(z.string(), z.object({ path: z.string(), format: z.enum(IMAGE_FORMATS) })),
  /** The checkpoint the VM's present state derives from (null: no checkpoint yet). */
  current: z.string().nullable(),
  checkpoints: z.array(CheckpointRecord),
});
export type CheckpointTree = z.infer<typeof CheckpointTree>;

export function emptyTree(vmId: string): CheckpointTree {
  return { version: 1, vmId, base: {}, current: null, checkpoints: [] };
}

/** A checkpoint name is a name like a VM's: 1–63 letters, digits, dot, dash, underscore. */
export function assertCheckpointName(vm: string, name: string): void {
  if (!NAME_RE.test(name))
    throw new InvalidInputError(
      `Cannot use '${name}' as a checkpoint name of VM '${vm}': it must be 1–63 letters, digits, dot, dash or ` +
        'underscore, starting with a letter or digit; choose another name',
      { vm, name },
    );
}

export function assertNewName(tree: CheckpointTree, vm: string, name: string): void {
  assertCheckpointName(vm, name);
  if (tree.checkpoints.some((c) => c.name === name))
    throw new FerryError(
      'E_CHECKPOINT_EXISTS',
      `Cannot create checkpoint '${name}' of VM '${vm}': a checkpoint with that name exists; ` +
        `choose another name or remove it with 'ferry checkpoint rm ${vm} ${name}'`,
      { context: { vm, checkpoint: name } },
    );
}

/** The checkpoint called `name` (or with that id); E_CHECKPOINT_NOT_FOUND. */
export function findCheckpoint(tree: CheckpointTree, vm: string, name: string, what: string): CheckpointRecord {
  const c = tree.checkpoints.find((x) => x.name === name) ?? tree.checkpoints.find((x) => x.id === name);
  if (!c) {
    const names = tree.checkpoints.map((x) => x.name);
    throw new NotFoundError(
      'E_CHECKPOINT_NOT_FOUND',
      `Cannot ${what} checkpoint '${name}' of VM '${vm}': it has no such checkpoint` +
        (names.length ? ` (it has ${names.join(', ')})` : ' (it has none)') +
        `; 'ferry checkpoint list ${vm}' shows them`,
      { vm, checkpoint: name },
    );
  }
  return c;
}

/** A free name for the branch that keeps the present state when a checkpoint is applied. */
export function branchName(tree: CheckpointTree, now: Date): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-');
  const base = `before-apply-${stamp}`;
  let name = base;
  for (let i = 2; tree.checkpoints.some((c) => c.name === name); i++) name = `${base}-${i}`;
  return name;
}

export function byId(tree: CheckpointTree, id: string): CheckpointRecord {
  const c = tree.checkpoints.find((x) => x.id === id);
  if (!c) throw new FerryError('E_INTERNAL', `Checkpoint tree of VM ${tree.vmId} names a missing checkpoint ${id}`);
  return c;
}

/** `id` and its ancestors, nearest first. */
export function lineage(tree: CheckpointTree, id: string | null): CheckpointRecord[] {
  const out: CheckpointRecord[] = [];
  for (let at = id; at !== null;) {
    const c = byId(tree, at);
    out.push(c);
    at = c.parent;
  }
  return out;
}

/** What is layered directly on a checkpoint's images: its children, and 'active' when the present state is. */
export function dependents(tree: CheckpointTree, id: string): Array<CheckpointRecord | 'active'> {
  const out: Array<CheckpointRecord | 'active'> = tree.checkpoints.filter((c) => c.parent === id);
  if (tree.current === id) out.push('active');
  return out;
}

/** The image of disk `diskId` at checkpoint `id` (null id: the state before any checkpoint), absolute. */
export function imageOf(
  tree: CheckpointTree,
  folder: string,
  id: string | null,
  diskId: string,
): { path: string; format: z.infer<typeof CheckpointTree>['base'][string]['format'] } {
  const base = tree.base[diskId];
  if (!base)
    throw new FerryError('E_INTERNAL', `Checkpoint tree of VM ${tree.vmId} has no base image of disk ${diskId}`);
  if (id === null) return base;
  const f = byId(tree, id).disks[diskId];
  return f ? { path: path.join(folder, f), format: 'qcow2' } : base;
}

/** The checkpoint's own files (relative), for list and removal. */
export function filesOf(c: CheckpointRecord): string[] {
  return [...Object.values(c.disks).flatMap((f) => (f ? [f] : [])), ...(c.memory ? [c.memory] : [])];
}

export interface TreeNodeView {
  id: string;
  name: string;
  parent: string | null;
  depth: number;
  created: string;
  memory: boolean;
  current: boolean;
}

/** Depth-first order (children by creation time), with depths, for the tree view. */
export function treeOrder(tree: CheckpointTree): TreeNodeView[] {
  const out: TreeNodeView[] = [];
  const walk = (parent: string | null, depth: number): void => {
    const kids = tree.checkpoints
      .filter((c) => c.parent === parent)
      .sort((a, b) => a.created.localeCompare(b.created) || a.name.localeCompare(b.name));
    for (const c of kids) {
      out.push({
        id: c.id,
        name: c.name,
        parent: c.parent,
        depth,
        created: c.created,
        memory: c.memory !== null,
        current: tree.current === c.id,
      });
      walk(c.id, depth + 1);
    }
  };
  walk(null, 0);
  return out;
}

/** The tree after checkpoint `id` is removed: its children hang from its parent. */
export function withoutCheckpoint(tree: CheckpointTree, id: string): CheckpointTree {
  const gone = byId(tree, id);
  return {
    ...tree,
    current: tree.current === id ? gone.parent : tree.current,
    checkpoints: tree.checkpoints
      .filter((c) => c.id !== id)
      .map((c) => (c.parent === id ? { ...c, parent: gone.parent } : c)),
  };
}
