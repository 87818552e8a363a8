// Storage pools: named folders a host may put VM files in. A `local` pool is this host's
// own; a `shared` pool is a path every host sees (NFS, SMB, CephFS; one folder in the lab).
// Like an SMB share's ACL in Hyper-V, a shared pool's grants live on the share itself
// (.ferry-pool.json), so every host reads the same list, and a host that is not granted
// refuses to use the pool.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, InvalidInputError, NotFoundError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';

export type PoolKind = 'local' | 'shared';
export interface PoolDef {
  name: string;
  kind: PoolKind;
  path: string;
}
export interface PoolStatus extends PoolDef {
  totalBytes: number;
  freeBytes: number;
  granted: string[];
  usable: boolean;
}

const GRANTS_FILE = '.ferry-pool.json';

interface GrantsDoc {
  name: string;
  granted: string[];
}

export async function readGrants(pool: PoolDef): Promise<string[]> {
  if (pool.kind === 'local') return [];
  try {
    const doc = JSON.parse(await fsp.readFile(path.join(pool.path, GRANTS_FILE), 'utf8')) as GrantsDoc;
    return Array.isArray(doc.granted) ? doc.granted.filter((h) => typeof h === 'string') : [];
  } catch {
    return [];
  }
}

async function writeGrants(pool: PoolDef, granted: string[]): Promise<void> {
  const file = path.join(pool.path, GRANTS_FILE);
  await writeFileAtomic(
    file,
    JSON.stringify({ name: pool.name, granted: [...new Set(granted)].sort() }, null, 2) + '\n',
  );
}

export async function setGrant(pool: PoolDef, host: string, granted: boolean): Promise<string[]> {
  if (pool.kind !== 'shared') {
    throw new InvalidInputError(
      `Cannot change access to pool '${pool.name}': it is a local pool, only its own host uses it; ` +
        'grant access to a shared pool instead',
      { pool: pool.name },
    );
  }
  const cur = await readGrants(pool);
  const next = granted ? [...cur, host] : cur.filter((h) => h !== host);
  await writeGrants(pool, next);
  return readGrants(pool);
}

export async function poolStatus(pool: PoolDef, host: string): Promise<PoolStatus> {
  let totalBytes = 0;
  let freeBytes = 0;
  try {
    const st = await fsp.statfs(pool.path);
    totalBytes = st.blocks * st.bsize;
    freeBytes = st.bavail * st.bsize;
  } catch {
    /* missing path: shown as 0 and not usable */
  }
  const granted = await readGrants(pool);
  const exists = totalBytes > 0;
  return {
    ...pool,
    totalBytes,
    freeBytes,
    granted,
    usable: exists && (pool.kind === 'local' || granted.includes(host)),
  };
}

/**
 * The real path of `p` (or of its nearest existing ancestor, plus the rest), so symlinks
 * cannot lead out of a pool.
 */
export function realPathLoose(p: string): string {
  let cur = path.resolve(p);
  const rest: string[] = [];
  for (;;) {
    try {
      return path.join(fs.realpathSync(cur), ...rest.reverse());
    } catch {
      const parent = path.dirname(cur);
      if (parent === cur) return path.resolve(p);
      rest.push(path.basename(cur));
      cur = parent;
    }
  }
}

export function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** The pool holding `p` (after resolving symlinks), or null. */
export function poolOf(pools: PoolDef[], p: string): PoolDef | null {
  const real = realPathLoose(p);
  let best: PoolDef | null = null;
  for (const pool of pools) {
    const root = realPathLoose(pool.path);
    if (isInside(real, root) && (!best || root.length > realPathLoose(best.path).length)) best = pool;
  }
  return best;
}

/**
 * Checks that `p` lies inside a pool this host may use; returns that pool. `what` names the
 * path in the error ("VM folder", "disk disk0").
 */
export async function assertInUsablePool(pools: PoolDef[], host: string, p: string, what: string): Promise<PoolDef> {
  if (!path.isAbsolute(p) || p.includes('\0'))
    throw new InvalidInputError(
      `Cannot use ${what} '${p}': not an absolute path; give a full path inside a storage pool`,
      { path: p },
    );
  const pool = poolOf(pools, p);
  if (!pool) {
    const list = pools.map((x) => `${x.name} (${x.path})`).join(', ');
    throw new InvalidInputError(
      `Cannot use ${what} '${p}': it is outside every storage pool of host '${host}'; put it under one of: ${list}`,
      { path: p, pools: pools.map((x) => x.path) },
    );
  }
  const st = await poolStatus(pool, host);
  if (!st.usable) {
    if (st.totalBytes === 0)
      throw new FerryError(
        'E_POOL_UNAVAILABLE',
        `Cannot use ${what} '${p}': pool '${pool.name}' (${pool.path}) is not reachable from host '${host}'; ` +
          'mount it or fix the pool path',
        { context: { pool: pool.name } },
      );
    throw new FerryError(
      'E_POOL_NOT_GRANTED',
      `Cannot use ${what} '${p}': host '${host}' is not granted access to shared pool '${pool.name}'; ` +
        `run 'ferry pool grant ${pool.name} --host ${host}'`,
      { context: { pool: pool.name, host } },
    );
  }
  return pool;
}

export function findPool(pools: PoolDef[], name: string, host: string): PoolDef {
  const pool = pools.find((x) => x.name === name);
  if (!pool)
    throw new NotFoundError(
      'E_POOL_NOT_FOUND',
      `Cannot find storage pool '${name}' on host '${host}'; 'ferry pool list --host ${host}' shows its pools`,
      { pool: name, host },
    );
  return pool;
}
