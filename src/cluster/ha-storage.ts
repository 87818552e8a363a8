// Where an HA VM's files may live: every node of its cluster must see them (a shared pool), or
// no other node could restart it after its host fails. One check for `vm new --ha`,
// `cluster add-vm` and `move-storage` of an HA VM.
import { FerryError } from '../errors.js';
import { poolOf, type PoolDef } from '../storage/pools.js';

export interface HaFile {
  /** "disk disk0", "its folder" */
  what: string;
  path: string;
}

/** The files other nodes need to restart the VM: its disks and its folder (vm.json). */
export function haFiles(spec: { disks: { id: string; path: string }[]; configPath: string }): HaFile[] {
  return [
    ...spec.disks.map((d) => ({ what: `disk ${d.id}`, path: d.path })),
    { what: 'its folder', path: spec.configPath },
  ];
}

/** The first file not in a shared pool, with why ("in local pool 'local'", "in no pool"); null if all are shared. */
export function firstUnshared(files: HaFile[], pools: PoolDef[]): { file: HaFile; where: string } | null {
  for (const file of files) {
    const pool = poolOf(pools, file.path);
    if (pool?.kind !== 'shared') return { file, where: pool ? `in local pool '${pool.name}'` : 'in no pool' };
  }
  return null;
}

/**
 * Throws E_STORAGE_NOT_SHARED if a file is not on shared storage. `action` completes "Cannot …"
 * and `fix` says what to do instead.
 */
export function assertHaStorage(files: HaFile[], pools: PoolDef[], action: string, fix: string, vm: string): void {
  const bad = firstUnshared(files, pools);
  if (!bad) return;
  throw new FerryError(
    'E_STORAGE_NOT_SHARED',
    `Cannot ${action}: ${bad.file.what} (${bad.file.path}) is ${bad.where}, so no other node could ` +
      `restart the HA VM after its host fails; ${fix}`,
    { context: { vm, path: bad.file.path } },
  );
}

/** The shared pools by name, for the fix in a message ("/shared/..."). */
export function sharedPoolHint(pools: PoolDef[]): string {
  const shared = pools.filter((p) => p.kind === 'shared').map((p) => p.path);
  return shared.length ? shared.map((p) => `${p}/...`).join(' or ') : 'a shared pool';
}
