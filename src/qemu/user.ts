// The unprivileged user QEMU runs as (agent config `qemu.user`, e.g. ferry-qemu). The agent
// stays root (bridges, taps, namespaces, scopes) and starts QEMU through setpriv, which sets
// the user, its group and its supplementary groups (kvm, for /dev/kvm) before exec: Node's
// spawn({uid, gid}) drops every supplementary group, and QEMU's own -runas would need the
// setuid calls that -sandbox elevateprivileges=deny forbids. Everything QEMU opens or creates
// is then made the user's: the run folder, writable images (at creation and at every start),
// the sockets the agent listens on for QEMU; read-only files and the folders on the way must
// let the user in, which is checked before QEMU starts so the error names the path.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { run } from '../util/exec.js';

/** The user the package makes for QEMU: `ferry host init` and the lab make it qemu.user. */
export const DEFAULT_QEMU_USER = 'ferry-qemu';

export interface QemuUser {
  name: string;
  uid: number;
  gid: number;
  /** Every group of the user (primary and supplementary). */
  groups: number[];
}

/** One per agent process: every QEMU of this host runs as the same user. */
let current: QemuUser | null = null;

export function qemuUser(): QemuUser | null {
  return current;
}

export function setQemuUser(u: QemuUser | null): void {
  current = u;
}

export class QemuUserError extends FerryError {
  constructor(what: string, reason: string, fix: string, context: Record<string, unknown> = {}) {
    super('E_QEMU_USER', `Cannot ${what}: ${reason}; ${fix}`, { context });
  }
}

/** The user's ids from the system's databases (getent: also NSS users), or null if it does not exist. */
export async function lookupQemuUser(name: string, opts: { signal?: AbortSignal } = {}): Promise<QemuUser | null> {
  let line: string;
  try {
    line = (await run('getent', ['passwd', name], { timeoutMs: 5000, signal: opts.signal })).stdout.trim();
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    return null; // getent exits 2 for an unknown name
  }
  const f = line.split(':');
  const uid = Number(f[2]);
  const gid = Number(f[3]);
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) return null;
  const ids = (await run('id', ['-G', name], { timeoutMs: 5000, signal: opts.signal })).stdout.trim();
  const groups = ids.split(/\s+/).map(Number).filter(Number.isInteger);
  return { name, uid, gid, groups: groups.includes(gid) ? groups : [gid, ...groups] };
}

/** The command prefix that becomes the user before exec-ing QEMU (same pid: setpriv execs). */
export function dropPrivilegesArgs(u: QemuUser): string[] {
  return ['setpriv', `--reuid=${u.uid}`, `--regid=${u.gid}`, '--init-groups', '--'];
}

/** Makes a file or folder QEMU writes the user's (no-op while QEMU runs as root); a link is not followed. */
export async function ownForQemu(p: string): Promise<void> {
  if (!current) return;
  await fsp.lchown(p, current.uid, current.gid);
}

/** ownForQemu through an open handle (`/proc/self/fd/N`, e.g. src/storage/beneath.ts's): that very file. */
export async function ownHandleForQemu(procPath: string): Promise<void> {
  if (!current) return;
  await fsp.chown(procPath, current.uid, current.gid);
}

/**
 * The run folder of a VM: the user's, mode 0750 (the agent, root, reaches it anyway), with
 * every file a previous QEMU left (serial log, sockets) made the user's too.
 */
export async function prepareRunDir(dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o750 });
  if (!current) return;
  await fsp.chmod(dir, 0o750);
  await ownForQemu(dir);
  for (const f of await fsp.readdir(dir)) await ownForQemu(path.join(dir, f));
}

/** Can `u` do `want` on `file` by its mode bits (QEMU has no capabilities to override them)? */
function permits(st: fs.Stats, u: QemuUser, want: number): boolean {
  const bits = st.uid === u.uid ? st.mode >> 6 : u.groups.includes(st.gid) ? st.mode >> 3 : st.mode;
  return (bits & want) === want;
}

/** The first folder from / down to `dir` (included) that `u` may not enter, or null. */
export async function blockedFolder(dir: string, u: QemuUser): Promise<string | null> {
  const dirs: string[] = [];
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    dirs.unshift(d);
    if (d === path.dirname(d)) break;
  }
  for (const d of dirs) if (!permits(await fsp.stat(d), u, 1)) return d;
  return null;
}

/**
 * Checks that the QEMU user reaches `file` (every folder on the way searchable) and may read
 * it, or also write it. Throws E_QEMU_USER naming the first path that stops it.
 */
export async function assertQemuCanOpen(file: string, access: 'r' | 'rw', what: string): Promise<void> {
  const u = current;
  if (!u) return;
  const abs = path.resolve(file);
  const d = await blockedFolder(path.dirname(abs), u);
  if (d)
    throw new QemuUserError(
      what,
      `QEMU runs as '${u.name}', which may not enter ${d}`,
      `let it through (chmod o+x ${d}) or remove qemu.user to run QEMU as root`,
      { path: d, user: u.name },
    );
  if (!permits(await fsp.stat(abs), u, access === 'rw' ? 6 : 4))
    throw new QemuUserError(
      what,
      `QEMU runs as '${u.name}', which may not ${access === 'rw' ? 'write' : 'read'} ${abs}`,
      access === 'rw'
        ? `make it the user's (chown ${u.name}: ${abs})`
        : `let it read it (chgrp ${u.name} ${abs} && chmod g+r ${abs})`,
      { path: abs, user: u.name },
    );
}

/**
 * A folder QEMU must pass through but not list (the data folder, a pool, a VM's folder):
 * the search bit for others, nothing else changed. Not the group: systemd re-owns a unit's
 * StateDirectory (and everything in it) when the top folder's group is not the unit's.
 */
export async function letQemuThrough(dir: string): Promise<void> {
  const u = current;
  if (!u) return;
  const st = await fsp.stat(dir);
  if (!permits(st, u, 1)) await fsp.chmod(dir, (st.mode & 0o7777) | 0o001);
}

/** A file QEMU only reads (a kernel copied into the VM's folder): group the user's, group-readable. */
export async function letQemuRead(file: string): Promise<void> {
  const u = current;
  if (!u) return;
  const st = await fsp.stat(file);
  if (permits(st, u, 4)) return;
  await fsp.chown(file, st.uid, u.gid);
  await fsp.chmod(file, (st.mode & 0o7777) | 0o040);
}

/** A secret QEMU reads (a TLS key): root's, readable by the user's group only (0640). */
export async function shareWithQemu(file: string): Promise<void> {
  const u = current;
  if (!u) return;
  await fsp.chown(file, 0, u.gid);
  await fsp.chmod(file, 0o640);
}
