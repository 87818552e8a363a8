// The lab runs QEMU as an installed host does: as ferry-qemu (scripts/setup and the package
// make it), with its seccomp sandbox on. The lab's own folders let the user pass (0711: enter,
// not list); a folder the lab did not make is never changed, and if one on the way stops the
// user, or the user does not exist, the lab's QEMUs run as root and the lab says so.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { blockedFolder, DEFAULT_QEMU_USER as LAB_QEMU_USER, lookupQemuUser } from '../qemu/user.js';

/** Makes `dir` and its missing parents; the folders it made become 0711 (mkdir's mode is masked by the umask). */
export async function makeLabFolder(dir: string): Promise<void> {
  const first = await fsp.mkdir(dir, { recursive: true });
  if (!first) return;
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    await fsp.chmod(d, 0o711);
    if (d === path.resolve(first) || d === path.dirname(d)) break;
  }
}

/**
 * The qemu.user for the lab's hosts: ferry-qemu when the lab runs as root, the user exists and
 * it may pass every folder down to each of `dirs`; else null, with the reason to tell the user.
 */
export async function labQemuUser(
  dirs: string[],
  opts: { signal?: AbortSignal } = {},
): Promise<{ user: string; reason?: never } | { user: null; reason: string }> {
  if (process.getuid?.() !== 0) return { user: null, reason: 'the lab does not run as root' };
  const u = await lookupQemuUser(LAB_QEMU_USER, opts);
  if (!u) return { user: null, reason: `user ${LAB_QEMU_USER} does not exist (scripts/setup makes it)` };
  for (const dir of dirs) {
    const blocked = await blockedFolder(dir, u);
    if (blocked)
      return { user: null, reason: `${LAB_QEMU_USER} may not enter ${blocked} (chmod o+x ${blocked} to let it)` };
  }
  return { user: u.name };
}
