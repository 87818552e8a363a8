// Reads and writes a VM's checkpoint tree (model.ts) in its checkpoint folder, atomically.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError } from '../errors.js';
import type { VmSpec } from '../vm/spec.js';
import { CheckpointTree, emptyTree, TREE_DIR, TREE_FILE } from './model.js';
import { writeFileAtomic } from '../util/atomic-file.js';

/** The folder holding a VM's checkpoint tree and files. */
export function treeFolder(spec: Pick<VmSpec, 'checkpointPath'>): string {
  return path.join(spec.checkpointPath, TREE_DIR);
}

export async function loadTree(spec: Pick<VmSpec, 'checkpointPath' | 'id' | 'name'>): Promise<CheckpointTree> {
  const file = path.join(treeFolder(spec), TREE_FILE);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyTree(spec.id);
    throw err;
  }
  const parsed = CheckpointTree.safeParse(JSON.parse(text));
  if (!parsed.success || parsed.data.vmId !== spec.id)
    throw new FerryError(
      'E_CHECKPOINT_CORRUPT',
      `Cannot read the checkpoints of VM '${spec.name}': ${file} is not its checkpoint tree` +
        (parsed.success ? ` (it belongs to VM ${parsed.data.vmId})` : ` (${parsed.error.issues[0]?.message ?? ''})`) +
        '; restore the file from a backup',
      { context: { vm: spec.name, file } },
    );
  return parsed.data;
}

/** Writes the tree (an empty one removes the file and, when empty, the folder). */
export async function saveTree(spec: Pick<VmSpec, 'checkpointPath'>, tree: CheckpointTree): Promise<void> {
  const dir = treeFolder(spec);
  const file = path.join(dir, TREE_FILE);
  if (tree.checkpoints.length === 0) {
    await fsp.rm(file, { force: true });
    await fsp.rmdir(dir).catch(() => undefined);
    return;
  }
  await fsp.mkdir(dir, { recursive: true });
  await writeFileAtomic(file, JSON.stringify(CheckpointTree.parse(tree), null, 2) + '\n', { sync: true });
}

/** Whether the VM has any checkpoint (a move that cannot carry them must refuse). */
export async function hasCheckpoints(spec: Pick<VmSpec, 'checkpointPath' | 'id' | 'name'>): Promise<boolean> {
  return (await loadTree(spec)).checkpoints.length > 0;
}

/**
 * A removed VM's checkpoints go with it: the folder's files, and the base images the VM
 * made (attached and imported ones only with `deleteExternal`, as for its disks).
 */
export async function removeCheckpointFiles(spec: VmSpec, opts: { deleteExternal?: boolean } = {}): Promise<void> {
  const tree = await loadTree(spec).catch(() => null);
  if (!tree || tree.checkpoints.length === 0) return;
  for (const d of spec.disks) {
    const base = tree.base[d.id];
    if (base && base.path !== d.path && (!d.external || opts.deleteExternal)) await fsp.rm(base.path, { force: true });
  }
  await fsp.rm(treeFolder(spec), { recursive: true, force: true });
}

/**
 * The images a checkpoint's removal may write into while the VM runs (commit into a base disk,
 * stream into a layer): every checkpoint's images and the base disks, as absolute paths. A tree
 * that cannot be read names none (the start goes on; removing a checkpoint then fails anyway).
 */
export async function writableLayers(spec: Pick<VmSpec, 'checkpointPath' | 'id' | 'name'>): Promise<Set<string>> {
  const tree = await loadTree(spec).catch(() => null);
  const out = new Set<string>();
  if (!tree) return out;
  for (const b of Object.values(tree.base)) out.add(path.resolve(b.path));
  for (const c of tree.checkpoints)
    for (const f of Object.values(c.disks)) if (f) out.add(path.join(treeFolder(spec), f));
  return out;
}
