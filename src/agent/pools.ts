// This host's storage pools: the ones its configuration names (prepared at start), the ones
// added later, browsing a pool's folders, and granting hosts access to a shared pool.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, InvalidInputError, NotFoundError } from '../errors.js';
import { findPool, isInside, poolStatus, realPathLoose, setGrant, type PoolDef } from '../storage/pools.js';
import type { Emit } from '../api/events.js';
import type { PoolView } from '../api/schemas.js';
import type { Registry } from './registry.js';

export interface PoolListing {
  pool: string;
  root: string;
  path: string;
  absolute: string;
  entries: Array<{ name: string; kind: 'dir' | 'file'; sizeBytes: number }>;
}

export class Pools {
  constructor(
    private readonly host: string,
    private readonly registry: Registry,
    private readonly emit: Emit,
  ) {}

  /** Records the configured pools and creates the local ones' folders. */
  async init(defs: readonly PoolDef[]): Promise<void> {
    for (const p of defs) {
      this.registry.upsertPool(p);
      if (p.kind === 'local') await fsp.mkdir(p.path, { recursive: true });
    }
  }

  list(): PoolDef[] {
    return this.registry.listPools();
  }

  views(): Promise<PoolView[]> {
    return Promise.all(this.list().map((p) => poolStatus(p, this.host)));
  }

  /** Lists a folder inside a pool; the path may not leave the pool (symlinks resolved). */
  async browse(name: string, rel: string): Promise<PoolListing> {
    const pool = findPool(this.list(), name, this.host);
    const abs = path.resolve(pool.path, rel.replace(/^\/+/, ''));
    if (!isInside(realPathLoose(abs), realPathLoose(pool.path))) {
      throw new InvalidInputError(
        `Cannot browse '${rel}' in pool '${name}': it leads outside the pool; give a path inside it`,
        { path: rel },
      );
    }
    const ents = await fsp.readdir(abs, { withFileTypes: true }).catch(() => {
      throw new NotFoundError('E_PATH_NOT_FOUND', `Cannot browse '${rel}' in pool '${name}': no such folder`, {
        path: rel,
      });
    });
    const entries: PoolListing['entries'] = [];
    for (const d of ents) {
      if (d.name.startsWith('.')) continue;
      const st = await fsp.stat(path.join(abs, d.name)).catch(() => null);
      if (!st) continue;
      entries.push({
        name: d.name,
        kind: st.isDirectory() ? 'dir' : 'file',
        sizeBytes: st.isDirectory() ? 0 : st.size,
      });
    }
    entries.sort((a, b) => (a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind === 'dir' ? -1 : 1));
    return { pool: name, root: pool.path, path: path.relative(pool.path, abs), absolute: abs, entries };
  }

  async add(p: PoolDef): Promise<PoolView> {
    if (this.list().some((x) => x.name === p.name))
      throw new FerryError(
        'E_POOL_EXISTS',
        `Cannot add pool '${p.name}' to host '${this.host}': it exists; choose another name`,
        {},
      );
    const st = await fsp.stat(p.path).catch(() => null);
    if (!st?.isDirectory())
      throw new InvalidInputError(
        `Cannot add pool '${p.name}': ${p.path} is not a folder on host '${this.host}'; create or mount it first`,
        { path: p.path },
      );
    this.registry.upsertPool(p);
    this.emit('pool.changed', { pool: p.name });
    return poolStatus(p, this.host);
  }

  async grant(name: string, host: string, granted: boolean): Promise<PoolView> {
    const pool = findPool(this.list(), name, this.host);
    await setGrant(pool, host, granted);
    this.emit('pool.changed', { pool: name });
    return poolStatus(pool, this.host);
  }
}
