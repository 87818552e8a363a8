// The destination's half of a shared-nothing move of a VM with checkpoints: the chain's read-only
// files (checkpoint overlays, memory files, base images) are received before the VM's QEMU can
// open its disks, which sit on them. Each file is checked against the tree the source sent (only
// files that tree names, inside pools this host may use), created exclusively without following a
// link at its exact size, and served raw over NBD by a QEMU of its own (TLS, only the source's
// certificate); the source writes it with qemu-img. Then that QEMU quits, each overlay's backing
// reference is pointed at the copies (`qemu-img rebase -u`: the data is the same) and the tree is
// written; only then do the disks and the VM's QEMU follow (incoming.ts).
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { IncomingRequest } from '../api/peer-actions.js';
import type { ImageFormat } from '../api/common.js';
import { FerryError, InvalidInputError } from '../errors.js';
import { rebaseHeld } from '../qemu/img-files.js';
import { isQemuAlive, QemuProcess } from '../qemu/process.js';
import { SANDBOX_ARGS } from '../qemu/sandbox.js';
import { noDelayOnListener } from '../qemu/tcp-nodelay.js';
import { checkOpenedFiles } from '../qemu/opened-files.js';
import { prepareRunDir } from '../qemu/user.js';
import { assertInUsablePool, type PoolDef } from '../storage/pools.js';
import { exists } from '../vm/folder.js';
import type { VmSpec } from '../vm/spec.js';
import { imageOf, TREE_DIR, TREE_FILE, type CheckpointTree } from '../checkpoint/model.js';
import { sleep } from '../util/exec.js';
import { makeFolders, poolRoots, removeFolders, writeNewFile } from './claim.js';
import type { MoveHost } from './host.js';
import type { Step } from './runner.js';
import { addTlsCreds, qemuTlsDir } from './tls.js';

type Storage = NonNullable<IncomingRequest['storage']>;
export type Chain = NonNullable<Storage['chain']>;

const MiB = 1048576;

/** What the destination knows of a chain file from the tree: the backing its copy gets (qcow2 overlays). */
export interface ChainRole {
  path: string;
  bytes: number;
  backing: { path: string; format: ImageFormat } | null;
}

/** The chain's part of an incoming move (incoming.ts's context narrowed to what these steps use). */
export interface ChainCtx {
  host: MoveHost;
  item: {
    spec: VmSpec;
    req: IncomingRequest;
    jobId: string;
    chainStage: 0 | 1 | 2;
    chainRoles: ChainRole[];
    chainServer: QemuProcess | null;
    chainNbd: { host: string; port: number } | null;
  };
  signal?: AbortSignal;
  localAddress?: string;
}

const refuse = (spec: VmSpec, what: string): InvalidInputError =>
  new InvalidInputError(
    `Cannot receive the checkpoints of VM '${spec.name}': ${what}; a move sends only the files its checkpoint ` +
      'tree names',
    {},
  );

/**
 * Every file of the chain is one the tree names — a base image (absolute, inside a usable pool),
 * a checkpoint's overlay or memory file (a plain name in the checkpoint folder), or, for a stopped
 * VM, an active layer of its spec in that folder — each sent once, none there yet, and the tree
 * complete (every file it needs is sent). Returns each file with the backing its copy points at.
 */
export async function checkChain(pools: PoolDef[], hostName: string, spec: VmSpec, st: Storage): Promise<ChainRole[]> {
  const chain = st.chain;
  if (!chain) return [];
  const tree: CheckpointTree = chain.tree;
  if (tree.vmId !== spec.id) throw refuse(spec, `the tree belongs to VM ${tree.vmId.slice(0, 64)}`);
  if (tree.checkpoints.length === 0 || tree.checkpoints.length > 512)
    throw refuse(spec, 'the tree is empty or too big');
  const folder = path.join(path.resolve(spec.checkpointPath), TREE_DIR);
  const expected = new Map<string, ChainRole['backing'] | 'none'>();
  const plain = (f: string): string => {
    if (path.basename(f) !== f || f === TREE_FILE || f.startsWith(`${TREE_FILE}.`) || f.length > 255)
      throw refuse(spec, `'${f.slice(0, 300)}' is not a plain file name in its checkpoint folder`);
    return path.join(folder, f);
  };
  const diskIds = new Set(spec.disks.map((d) => d.id));
  const activeDisks = new Set(st.disks.map((d) => path.resolve(d.path)));
  for (const [id, b] of Object.entries(tree.base)) {
    if (!diskIds.has(id))
      throw refuse(spec, `the tree has a base image of disk '${id.slice(0, 64)}', not one of its disks`);
    if (!path.isAbsolute(b.path) || path.resolve(b.path) !== b.path || b.path.includes('\0'))
      throw refuse(spec, `base image '${b.path.slice(0, 300)}' is not an absolute path`);
    await assertInUsablePool(pools, hostName, b.path, `a base image of arriving VM '${spec.name}'`);
    // A base that is still a disk's active layer (a disk added after the checkpoints) arrives as a disk.
    if (!activeDisks.has(b.path)) expected.set(b.path, 'none');
  }
  for (const c of tree.checkpoints) {
    for (const [id, f] of Object.entries(c.disks)) {
      if (!diskIds.has(id)) throw refuse(spec, `checkpoint '${c.name}' names disk '${id.slice(0, 64)}'`);
      if (f !== null) expected.set(plain(f), imageOf(tree, folder, c.parent, id));
    }
    if (c.memory) expected.set(plain(c.memory), 'none');
  }
  if (st.disks.length === 0) {
    // A stopped VM: its active layers are files of the chain too (copied, not mirrored).
    for (const d of spec.disks) {
      const p = path.resolve(d.path);
      if (path.dirname(p) === folder && tree.base[d.id]) expected.set(p, imageOf(tree, folder, tree.current, d.id));
    }
  }
  const roles: ChainRole[] = [];
  const seen = new Set<string>();
  for (const f of chain.files) {
    const want = expected.get(f.path);
    if (want === undefined || seen.has(f.path))
      throw refuse(
        spec,
        `'${f.path.slice(0, 300)}' is ${want === undefined ? 'not a file of its tree' : 'sent twice'}`,
      );
    seen.add(f.path);
    if (await exists(f.path))
      throw new FerryError(
        'E_DEST_PATH',
        `Cannot receive VM '${spec.name}' on host '${hostName}': ${f.path} already exists; choose another ` +
          '--storage-path',
      );
    roles.push({ path: f.path, bytes: f.bytes, backing: want === 'none' ? null : want });
  }
  const missing = [...expected.keys()].filter((p) => !seen.has(p));
  if (missing.length) throw refuse(spec, `the chain is incomplete (${missing.slice(0, 3).join(', ')} not sent)`);
  if (await exists(path.join(folder, TREE_FILE)))
    throw new FerryError(
      'E_DEST_PATH',
      `Cannot receive VM '${spec.name}' on host '${hostName}': ${folder} already holds a checkpoint tree; ` +
        'choose another --storage-path',
    );
  await checkRoom(spec, hostName, [
    ...roles.map((r) => ({ path: r.path, bytes: r.bytes })),
    ...st.disks.map((d) => ({ path: d.path, bytes: d.allocatedBytes })),
  ]);
  return roles;
}

/**
 * The chain and the disks fit where they go: free space counted per file system of the nearest
 * existing folder (a pool may hold mounts of its own), not per pool root.
 */
async function checkRoom(spec: VmSpec, hostName: string, files: Array<{ path: string; bytes: number }>): Promise<void> {
  const need = new Map<number, { dir: string; bytes: number; free: number }>();
  for (const f of files) {
    let dir = path.dirname(f.path);
    while (!(await exists(dir)) && dir !== path.dirname(dir)) dir = path.dirname(dir);
    const dev = (await fsp.stat(dir)).dev;
    const st = await fsp.statfs(dir);
    const acc = need.get(dev) ?? { dir, bytes: 0, free: st.bavail * st.bsize };
    acc.bytes += f.bytes;
    need.set(dev, acc);
  }
  for (const { dir, bytes, free } of need.values()) {
    if (bytes > free)
      throw new FerryError(
        'E_DEST_SPACE',
        `Cannot receive VM '${spec.name}' on host '${hostName}': its disks and checkpoint chain need ` +
          `${(bytes / MiB).toFixed(0)} MiB in ${dir} but it has ${(free / MiB).toFixed(0)} MiB free; ` +
          'free space or choose another --storage-path',
        { context: { dir, bytes, free } },
      );
  }
}

const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);

/** The chain's folders, then its files, each claimed (O_EXCL|O_NOFOLLOW) and sized before it is served. */
export const chainFilesStep: Step<ChainCtx> = {
  name: 'chain-files',
  phase: 'preparing',
  when: (ctx) => ctx.item.chainStage === 1,
  async run(ctx, s) {
    const { item } = ctx;
    const roots = poolRoots(ctx.host.pools());
    const folder = path.join(item.spec.checkpointPath, TREE_DIR);
    const dirs: string[] = [];
    const created: string[] = [];
    await makeFolders(roots, [folder, ...item.chainRoles.map((r) => path.dirname(r.path))], (c) => {
      dirs.splice(0, dirs.length, ...c);
      s.record({ dirs, created });
    });
    for (const r of item.chainRoles) {
      const what = `a checkpoint file of VM '${item.spec.name}'`;
      const claimed = (): void => {
        created.push(r.path);
        s.record({ dirs, created });
      };
      await writeNewFile(roots, r.path, new Uint8Array(0), what, claimed, { sizeBytes: r.bytes, forQemu: true });
    }
    return { dirs, created };
  },
  async undo(ctx, data) {
    for (const f of strings(data.created)) await fsp.rm(f, { force: true });
    await removeFolders(poolRoots(ctx.host.pools()), strings(data.dirs));
  },
};

/** A QEMU of its own serves the chain's files raw over NBD on the migration address (TLS: only the source). */
export const chainServerStep: Step<ChainCtx> = {
  name: 'chain-server',
  phase: 'preparing',
  when: (ctx) => ctx.item.chainStage === 1,
  async run(ctx, s) {
    const { host, item } = ctx;
    // The VM's run folder first (QEMU's user must pass through it), then the server's own in it.
    await prepareRunDir(host.runDir(item.spec.id));
    const runDir = path.join(host.runDir(item.spec.id), 'chain');
    await prepareRunDir(runDir);
    s.record({ runDir });
    const qmpSocket = path.join(runDir, 'qmp.sock');
    const pidFile = path.join(runDir, 'qemu.pid');
    const argv = [
      ...['-nodefaults', '-no-user-config', '-display', 'none', '-machine', 'none', ...SANDBOX_ARGS],
      ...['-qmp', `unix:${qmpSocket},server=on,wait=off`, '-pidfile', pidFile],
    ];
    const proc = await QemuProcess.spawn(argv, {
      vm: `${item.spec.name}.chain`,
      runDir,
      qmpSocket,
      pidFile,
      ...(ctx.signal ? { signal: ctx.signal } : {}),
    });
    item.chainServer = proc;
    s.record({ runDir, pid: proc.pid });
    const o = ctx.signal ? { signal: ctx.signal } : {};
    const req = item.req;
    if (req.tls) {
      await addTlsCreds(proc.qmp, 'ferry-tls', 'server', await qemuTlsDir(host.tls, host.dataDir), ctx.signal);
      await proc.qmp.execute(
        'object-add',
        { 'qom-type': 'authz-simple', id: 'ferry-authz', identity: peerDn(req.source, host.domainId) },
        o,
      );
    }
    const addr = host.migrationListenAddress(req.source, ctx.localAddress);
    const port = await startNbdServer(host, proc, addr, req.tls, o);
    for (const [i, r] of item.chainRoles.entries()) {
      await proc.qmp.execute(
        'blockdev-add',
        { driver: 'raw', 'node-name': `chain${i}`, file: { driver: 'file', filename: r.path } },
        o,
      );
      // The source writes into it: it must be the file made above, not a link swapped in since.
      await checkOpenedFiles(proc.pid, [r.path], host.pools(), { vm: item.spec.name, host: host.name, ...o });
      await proc.qmp.execute(
        'block-export-add',
        { type: 'nbd', id: `exp-chain${i}`, 'node-name': `chain${i}`, name: `chain${i}`, writable: true },
        o,
      );
    }
    item.chainNbd = { host: addr, port };
    return { runDir, pid: proc.pid };
  },
  async undo(ctx, data) {
    await stopChainServer(ctx, typeof data.pid === 'number' ? data.pid : null);
    if (typeof data.runDir === 'string') await fsp.rm(data.runDir, { recursive: true, force: true });
  },
};

async function stopChainServer(ctx: ChainCtx, pid: number | null): Promise<void> {
  const proc = ctx.item.chainServer;
  ctx.item.chainServer = null;
  ctx.item.chainNbd = null;
  if (proc) {
    await proc.quit({ timeoutMs: 10_000 }).catch(() => proc.kill());
    return;
  }
  if (pid === null || !isQemuAlive(pid)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
  for (let k = 0; k < 50 && isQemuAlive(pid); k++) await sleep(100);
}

/** The chain is written: its server quits, each copied overlay backs onto the copies, the tree is written. */
export const chainDoneStep: Step<ChainCtx> = {
  name: 'chain-done',
  phase: 'preparing',
  when: (ctx) => ctx.item.chainStage === 2,
  async run(ctx, s) {
    const { item } = ctx;
    const server = item.chainServer;
    if (!server || server.hasExited)
      throw new FerryError(
        'E_QEMU_GONE',
        `Cannot receive the checkpoints of VM '${item.spec.name}': its server is gone`,
      );
    await stopChainServer(ctx, null);
    for (const r of item.chainRoles) {
      if (!r.backing) continue;
      await rebaseHeld([{ path: r.path, format: 'qcow2' }], [r.backing], {
        pools: ctx.host.pools(),
        what: `a checkpoint file of VM '${item.spec.name}'`,
        unsafe: true,
        ...(ctx.signal ? { signal: ctx.signal } : {}),
      });
    }
    const tree = item.req.storage?.chain?.tree;
    const file = path.join(item.spec.checkpointPath, TREE_DIR, TREE_FILE);
    const text = Buffer.from(JSON.stringify(tree, null, 2) + '\n');
    await writeNewFile(poolRoots(ctx.host.pools()), file, text, `the checkpoint tree of VM '${item.spec.name}'`, () => {
      s.record({ file });
    });
    return { file };
  },
  async undo(_ctx, data) {
    if (typeof data.file === 'string') await fsp.rm(data.file, { force: true });
  },
};

/** The distinguished name QEMU (gnutls) reads from a host certificate of our domain. */
export function peerDn(host: string, domainId: string): string {
  return `O=ferry-domain-${domainId},OU=ferry-host,CN=${host}`;
}

/** Whether the agent already warned that it could not set TCP_NODELAY (once per process). */
let warnedNoDelay = false;

/**
 * Starts QEMU's NBD server on the migration address, on a port of the host's migration range
 * held until QEMU listens on it; with TLS only the source's certificate is let in (ferry-authz).
 * Its connections send each reply at once (qemu/tcp-nodelay.ts: QEMU 7.2 leaves Nagle on).
 */
export async function startNbdServer(
  host: MoveHost,
  proc: QemuProcess,
  addr: string,
  tls: boolean,
  o: { signal?: AbortSignal },
): Promise<number> {
  const lease = await host.migrationPort(addr, o);
  try {
    await proc.qmp.execute(
      'nbd-server-start',
      {
        addr: { type: 'inet', data: { host: addr, port: String(lease.port) } },
        ...(tls ? { 'tls-creds': 'ferry-tls', 'tls-authz': 'ferry-authz' } : {}),
      },
      o,
    );
  } finally {
    lease.release();
  }
  const why = await noDelayOnListener(proc.pid, lease.port, o);
  if (why && !warnedNoDelay) {
    warnedNoDelay = true;
    process.emitWarning(`NBD copies may be slower: cannot set TCP_NODELAY on QEMU's NBD server: ${why}`, {
      code: 'FERRY_NBD_NODELAY',
    });
  }
  return lease.port;
}
