// Where a moving VM's files go, decided and checked before anything starts: the destination
// paths of a shared-nothing move (what the destination creates and receives) and of a storage
// move (inside a usable pool, not taken, with room).
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, InvalidInputError } from '../errors.js';
import type { HostView } from '../api/schemas.js';
import { INCOMING_LIMITS, type IncomingRequest } from '../api/peer-actions.js';
import { assertHaStorage, haFiles, sharedPoolHint } from '../cluster/ha-storage.js';
import { imageInfo } from '../qemu/img.js';
import { assertInUsablePool, isInside, poolOf, poolStatus, type PoolDef } from '../storage/pools.js';
import { configFile, exists } from '../vm/folder.js';
import type { VmSpec } from '../vm/spec.js';
import { planDestPaths } from './compare.js';
import { chainFileBytes, movedTree, planChainMove, type ChainFile, type ChainPlan } from '../checkpoint/relocate.js';
import { hasCheckpoints, loadTree, removeCheckpointFiles } from '../checkpoint/store.js';
import type { CheckpointTree } from '../checkpoint/model.js';
import type { MoveOptions, StorageMoveRequest } from './schemas.js';
import { moveCopy, type CopyChoice } from './copy-choice.js';

const MiB = 1048576;

export interface SharedNothingPlan {
  /** The VM's spec as it will be on the destination. */
  destSpec: VmSpec;
  /** What the destination creates and receives. */
  request: NonNullable<IncomingRequest['storage']>;
  /** Files of the VM folder besides vm.json and the disks (kernel, initrd, …), by name. */
  files: string[];
  /** Their bytes, in the order `request.files` names them (sent after Prepare's JSON, api/incoming-body.ts). */
  fileData: Buffer[];
  /**
   * A VM with checkpoints: the chain's read-only files, copied once (file N is the destination's
   * export `chain<N>`), and the disks mirrored with sync=top onto overlays over that copy.
   */
  chain: { files: ChainFile[]; topOnly: string[] } | null;
  /** How the disks are copied and why, decided here once (copy-choice.ts). */
  copy: CopyChoice;
}

/** Shared nothing without paths: the VM goes to a folder named after it in the destination's local pool. */
export function withDefaults(options: MoveOptions, vmName: string, destView: HostView): MoveOptions {
  if (!options.includeStorage || options.storagePath || options.configPath || options.vhd) return options;
  const local = destView.pools.find((p) => p.kind === 'local');
  return local ? { ...options, storagePath: path.join(local.path, vmName) } : options;
}

/** Files of the VM folder that are not disks and not vm.json (kernel, initrd, …). */
export async function folderFiles(spec: VmSpec): Promise<string[]> {
  const disks = new Set(spec.disks.map((d) => path.resolve(d.path)));
  const out: string[] = [];
  for (const ent of await fsp.readdir(spec.configPath, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(spec.configPath, ent.name);
    if (ent.isFile() && ent.name !== 'vm.json' && !ent.name.startsWith('vm.json.tmp') && !disks.has(p)) {
      out.push(ent.name);
    }
  }
  return out;
}

/** Where every file goes on the destination, and what the destination must create. */
export async function sharedNothingPlan(
  spec: VmSpec,
  options: MoveOptions,
  destView: HostView,
  running: boolean,
): Promise<SharedNothingPlan> {
  const plan = planDestPaths(spec, options);
  const destPools = destView.pools.map((p) => ({ name: p.name, kind: p.kind, path: p.path }));
  const destSpec: VmSpec = structuredClone(spec);
  destSpec.configPath = plan.configPath;
  destSpec.checkpointPath = plan.checkpointPath;
  destSpec.pagingPath = plan.pagingPath;
  const chain = await planChainSend(spec, options, plan.checkpointPath);
  const chainFiles = chain ? [...chain.plan.files] : [];
  const topOnly: string[] = [];
  const disks: SharedNothingPlan['request']['disks'] = [];
  for (const pd of plan.disks) {
    const d = destSpec.disks[pd.index];
    if (!d) continue;
    const info = await imageInfo(d.path, { forceShare: true, format: d.format });
    const active = chain?.plan.actives[d.id];
    const dest = active?.to ?? pd.dest;
    d.path = dest;
    const pool = poolOf(destPools, dest);
    if (pool) d.pool = pool.name;
    else delete d.pool;
    if (active?.backing && !running) {
      // A stopped VM's active layer is a read-only file like the rest of the chain: copied as it is.
      chainFiles.push({ from: pd.source, to: dest, format: 'qcow2', backing: active.backing });
      continue;
    }
    if (active?.backing) topOnly.push(d.id);
    disks.push({
      id: d.id,
      path: dest,
      format: d.format,
      virtualSizeBytes: info.virtualSizeBytes,
      allocatedBytes: info.actualSizeBytes,
    });
  }
  // The chain's files (a base image in the VM folder) travel with the chain, not inside the request.
  const inChain = new Set(chainFiles.map((f) => path.resolve(f.from)));
  const files = (await folderFiles(spec)).filter((f) => !inChain.has(path.join(path.resolve(spec.configPath), f)));
  await assertSendable(spec, files);
  const fileData = await Promise.all(files.map((f) => fsp.readFile(path.join(spec.configPath, f))));
  const request: SharedNothingPlan['request'] = {
    disks,
    dirs: [...new Set([plan.configPath, plan.checkpointPath, plan.pagingPath])],
    files: files.map((f, i) => ({ path: path.join(plan.configPath, f), size: fileData[i]?.length ?? 0 })),
  };
  if (chain) {
    if (chainFiles.length > INCOMING_LIMITS.chainFiles)
      throw new InvalidInputError(
        `Cannot move VM '${spec.name}' with its storage: its checkpoint chain has ${chainFiles.length} files, more ` +
          `than a move carries (${INCOMING_LIMITS.chainFiles}); remove checkpoints first ('ferry checkpoint rm')`,
      );
    request.chain = {
      tree: chain.tree,
      files: await Promise.all(chainFiles.map(async (f) => ({ path: f.to, bytes: (await fsp.stat(f.from)).size }))),
    };
  }
  // A stopped VM with checkpoints sends its chain's files as they are (kinds/chain.ts): no resume.
  const readOnly = (id: string): boolean => spec.disks.find((x) => x.id === id)?.readOnly ?? false;
  const copy = moveCopy(
    running,
    options.resumable,
    disks.map((d) => ({ ...d, readOnly: readOnly(d.id) })),
    topOnly.length > 0 || (!running && chain !== null),
  );
  return { destSpec, request, files, fileData, chain: chain ? { files: chainFiles, topOnly } : null, copy };
}

/**
 * A VM with checkpoints moves with its chain: the checkpoint folder goes to the destination's,
 * the base images where its disks go (--storage-path), and the tree is rewritten for those paths.
 * Its disks are a chain held together by the folder: one disk elsewhere (--vhd) is refused.
 */
async function planChainSend(
  spec: VmSpec,
  options: MoveOptions,
  checkpointPath: string,
): Promise<{ plan: ChainPlan; tree: CheckpointTree } | null> {
  if (!(await hasCheckpoints(spec))) return null;
  if (options.vhd)
    throw new InvalidInputError(
      `Cannot move the disks of VM '${spec.name}' with --vhd: it has checkpoints, and its disks are a chain of ` +
        'images held together by its checkpoint folder; move them together with --storage-path',
    );
  const sp = options.storagePath;
  const plan = await planChainMove(
    spec,
    checkpointPath,
    (p) => (sp !== undefined ? path.join(sp, path.basename(p)) : p),
    true,
  );
  if (!plan) return null;
  return { plan, tree: movedTree(await loadTree(spec), plan.bases) };
}

/** The folder's files travel inside Prepare's request: within the destination's limits (peer-actions.ts). */
async function assertSendable(spec: VmSpec, files: string[]): Promise<void> {
  const sizes = await Promise.all(files.map(async (f) => (await fsp.stat(path.join(spec.configPath, f))).size));
  const bytes = sizes.reduce((a, b) => a + b, 0);
  const max = INCOMING_LIMITS.fileBytes;
  if (files.length > INCOMING_LIMITS.files || bytes > max)
    throw new InvalidInputError(
      `Cannot move VM '${spec.name}' with its storage: its folder ${spec.configPath} holds ${files.length} files ` +
        `of ${(bytes / MiB).toFixed(0)} MiB besides its disks and vm.json, more than a move carries ` +
        `(${INCOMING_LIMITS.files} files, ${max / MiB} MiB); move the other files out of the folder`,
      { files: files.length, bytes },
    );
}

/** Deletes a VM's disks and the files of its folder (after it left with copies of them), its checkpoints too. */
export async function deleteVmFiles(spec: VmSpec, files: string[]): Promise<void> {
  await removeCheckpointFiles(spec, { deleteExternal: true });
  for (const d of spec.disks) await fsp.rm(d.path, { force: true });
  await fsp.rm(configFile(spec.configPath), { force: true });
  for (const f of files) await fsp.rm(path.join(spec.configPath, f), { force: true });
  for (const dir of new Set([spec.checkpointPath, spec.pagingPath, spec.configPath])) {
    await fsp.rmdir(dir).catch(() => undefined);
  }
}

export interface StoragePlan {
  configPath: string;
  checkpointPath: string;
  pagingPath: string;
  /** disk id → new path (only disks that move) */
  disks: Record<string, string>;
  /** The checkpoint chain, when it moves with the checkpoint folder (its active layers are in `disks`). */
  chain?: ChainPlan;
  /**
   * How the disks are copied (copy-choice.ts): a running VM's by the mirror or by resumable
   * backup passes (kinds/storage-resume.ts), a stopped VM's by qemu-img. Absent in the journals
   * of agents before it: the mirror or qemu-img, as before.
   */
  copy?: CopyChoice;
}

/** Whether a storage move's new path holds a cut copy of this disk kept for a retry (kinds/storage-resume.ts). */
export type KeptCopyAt = (diskId: string, dest: string) => Promise<boolean>;

/** The VM's kept cut copies of earlier storage moves (storage-resume.ts), by disk. */
export type KeptCopies = () => Promise<Array<{ diskId: string; path: string }>>;

/** Destination of every item of a storage move, checked before anything starts. */
export async function storagePlan(
  pools: PoolDef[],
  hostName: string,
  spec: VmSpec,
  req: StorageMoveRequest,
  at: { running: boolean; kept: KeptCopyAt; others?: KeptCopies } = {
    running: false,
    kept: () => Promise.resolve(false),
  },
): Promise<StoragePlan> {
  const inFolder = (p: string): boolean => isInside(path.resolve(p), path.resolve(spec.configPath));
  const configPath = req.configPath ?? req.path ?? spec.configPath;
  const follow = (p: string, explicit?: string): string =>
    explicit ?? (inFolder(p) ? path.join(configPath, path.relative(spec.configPath, p)) : (req.path ?? p));
  const plan: StoragePlan = {
    configPath,
    checkpointPath: follow(spec.checkpointPath, req.checkpointPath),
    pagingPath: follow(spec.pagingPath, req.pagingPath),
    disks: {},
  };
  for (const src of Object.keys(req.vhd ?? {})) {
    if (!spec.disks.some((d) => path.resolve(d.path) === path.resolve(src))) {
      throw new InvalidInputError(
        `Cannot move storage of VM '${spec.name}': --vhd names ${src}, which is not one of its disks ` +
          `(${spec.disks.map((d) => d.path).join(', ')})`,
      );
    }
  }
  for (const d of spec.disks) {
    const dest = req.vhd?.[d.path] ?? (req.path ? path.join(req.path, path.basename(d.path)) : undefined);
    if (dest && path.resolve(dest) !== path.resolve(d.path)) plan.disks[d.id] = path.resolve(dest);
  }
  if (await hasCheckpoints(spec)) await planChain(spec, req, plan);
  const dests = Object.values(plan.disks);
  if (new Set(dests).size !== dests.length) {
    throw new InvalidInputError(
      `Cannot move storage of VM '${spec.name}': two disks would go to the same file; ` +
        'give each its own --vhd destination',
    );
  }
  if (
    !dests.length &&
    path.resolve(configPath) === path.resolve(spec.configPath) &&
    plan.checkpointPath === spec.checkpointPath &&
    plan.pagingPath === spec.pagingPath
  ) {
    throw new InvalidInputError(
      `Cannot move storage of VM '${spec.name}': everything is already there; ` +
        'give a new --path, --vhd or --config-path',
    );
  }
  if (spec.ha) {
    // Every node of the cluster must see where the HA VM is going, or no fail-over could restart it.
    assertHaStorage(
      haFiles({ disks: spec.disks.map((d) => ({ id: d.id, path: plan.disks[d.id] ?? d.path })), configPath }),
      pools,
      `move storage of HA VM '${spec.name}'`,
      `choose a shared pool (--path ${sharedPoolHint(pools)}), or first make it not HA ` +
        `('ferry cluster remove-vm ${spec.name}')`,
      spec.name,
    );
  }
  const need = new Map<PoolDef, number>();
  const sized: Array<{ id: string; format: string; allocatedBytes: number; readOnly: boolean }> = [];
  for (const [id, dest] of Object.entries(plan.disks)) {
    const pool = await assertInUsablePool(pools, hostName, dest, `destination of disk ${id}`);
    // A cut copy of this very disk kept there is this move's to resume or replace.
    const taken = await exists(dest);
    const kept = taken && (await at.kept(id, dest));
    if (taken && !kept) {
      throw new InvalidInputError(
        `Cannot move disk '${id}' of VM '${spec.name}' to ${dest}: a file is already there; choose another path`,
        { path: dest },
      );
    }
    const d = spec.disks.find((x) => x.id === id);
    if (!d) continue;
    const size = await imageInfo(d.path, { forceShare: true, format: d.format }).then((i) => i.actualSizeBytes);
    sized.push({ id, format: d.format, allocatedBytes: size, readOnly: d.readOnly });
    // The kept copy already holds its share of the pool.
    const held = kept ? (await fsp.stat(dest)).blocks * 512 : 0;
    need.set(pool, (need.get(pool) ?? 0) + Math.max(0, size - held));
  }
  plan.copy = moveCopy(at.running, req.resumable, sized, plan.chain !== undefined);
  for (const f of plan.chain?.files ?? []) {
    const pool = await assertInUsablePool(pools, hostName, f.to, 'destination of a checkpoint file');
    if (await exists(f.to))
      throw new InvalidInputError(
        `Cannot move the checkpoints of VM '${spec.name}': ${f.to} is already there; choose another path`,
        { path: f.to },
      );
    need.set(pool, (need.get(pool) ?? 0) + (await chainFileBytes(f)));
  }
  for (const dir of new Set([plan.configPath, plan.checkpointPath, plan.pagingPath])) {
    await assertInUsablePool(pools, hostName, dir, 'destination folder');
  }
  if (path.resolve(configPath) !== path.resolve(spec.configPath) && (await exists(configFile(configPath)))) {
    throw new InvalidInputError(
      `Cannot move the config of VM '${spec.name}' to ${configPath}: that folder already holds a VM; ` +
        'choose another --config-path',
    );
  }
  const freed = await freedByBegin(pools, spec, plan, at.others);
  for (const [pool, bytes] of need) {
    const st = await poolStatus(pool, hostName);
    const free = st.freeBytes + (freed.get(pool.name) ?? 0);
    if (bytes > free) {
      throw new FerryError(
        'E_DEST_SPACE',
        `Cannot move the disks of VM '${spec.name}': they hold ${(bytes / MiB).toFixed(0)} MiB` +
          `${plan.chain ? ' with their checkpoints' : ''} but pool '${pool.name}' has ` +
          `${(free / MiB).toFixed(0)} MiB free; free space or choose another pool`,
      );
    }
  }
  return plan;
}

/**
 * Per pool, the room the move's Begin frees: the VM's kept cut copies it does not take over
 * (another path, a disk that stays) are deleted there (storage-resume.ts), so a retry to another
 * path in a pool nearly full of its own kept copy is not refused. Never a file the VM uses.
 */
async function freedByBegin(
  pools: PoolDef[],
  spec: VmSpec,
  plan: StoragePlan,
  others: KeptCopies | undefined,
): Promise<Map<string, number>> {
  const freed = new Map<string, number>();
  for (const k of (await others?.()) ?? []) {
    const p = path.resolve(k.path);
    if (plan.disks[k.diskId] === p || spec.disks.some((d) => path.resolve(d.path) === p)) continue;
    const pool = poolOf(pools, p);
    const st = await fsp.lstat(p).catch(() => null);
    if (pool && st?.isFile()) freed.set(pool.name, (freed.get(pool.name) ?? 0) + st.blocks * 512);
  }
  return freed;
}

/**
 * A VM with checkpoints: its disks are a chain (base images, read-only overlays, the active
 * overlays) held together by the checkpoint folder, so they move with it: the folder's files
 * and active layers to the new folder, the base images to --path (or with the VM folder, or they stay).
 */
async function planChain(spec: VmSpec, req: StorageMoveRequest, plan: StoragePlan): Promise<void> {
  const fixed = path.resolve(plan.checkpointPath) === path.resolve(spec.checkpointPath);
  if (req.vhd || (fixed && Object.keys(plan.disks).length > 0))
    throw new InvalidInputError(
      `Cannot move the disks of VM '${spec.name}' ${req.vhd ? 'with --vhd' : 'without its checkpoint folder'}: ` +
        'it has checkpoints, and its disks are a chain of images held together by its checkpoint folder; ' +
        'move them together with --path, or the chain alone with --checkpoint-path',
    );
  if (fixed) return;
  // Base images go where the VM's disks go (--path), or follow its folder when they are in it.
  const rel = (p: string): string => path.relative(spec.configPath, p);
  const chain = await planChainMove(spec, plan.checkpointPath, (p) =>
    req.path
      ? path.join(req.path, path.basename(p))
      : isInside(path.resolve(p), path.resolve(spec.configPath))
        ? path.join(plan.configPath, rel(p))
        : p,
  );
  if (!chain) return;
  plan.chain = chain;
  plan.disks = {};
  for (const d of spec.disks) {
    const to = chain.actives[d.id]?.to;
    if (to && path.resolve(to) !== path.resolve(d.path)) plan.disks[d.id] = to;
  }
}
