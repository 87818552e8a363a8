// Host side of a VM's NICs: a bridge switch gives each NIC a tap device enslaved to the
// Linux bridge, created before QEMU starts and removed when it exits.
import { createHash } from 'node:crypto';
import fsp from 'node:fs/promises';
import { run } from '../util/exec.js';
import { FerryError, messageOf } from '../errors.js';
import { qemuUser, type QemuUser } from '../qemu/user.js';

const TUN = '/dev/net/tun';

/**
 * Why QEMU's user cannot open /dev/net/tun (which it must, to attach to its tap), else null.
 * Debian's udev makes it 0666; some containers and hardened hosts leave it 0600.
 */
export async function tunRefusal(u: QemuUser, file = TUN): Promise<string | null> {
  const st = await fsp.stat(file).catch(() => null);
  if (!st) return `${file} does not exist (load the tun module: modprobe tun)`;
  const rw = (bits: number): boolean => (bits & 0o6) === 0o6;
  const mode = st.mode & 0o777;
  if (rw(mode) || (st.uid === u.uid && rw(mode >> 6)) || (u.groups.includes(st.gid) && rw(mode >> 3))) return null;
  const octal = mode.toString(8).padStart(4, '0');
  return `QEMU's user '${u.name}' cannot open ${file} (mode ${octal}, owner ${st.uid}:${st.gid})`;
}

/**
 * Short (≤ 15 chars) tap name for NIC `index` of VM `vmId` on `host`: the host is part of it
 * because lab hosts share one kernel, where source and destination taps coexist for a while.
 */
export function tapName(vmId: string, host: string, index: number): string {
  const h = createHash('sha1').update(host).digest('hex').slice(0, 3);
  return `fy${vmId.replace(/-/g, '').slice(0, 7)}${h}n${index}`;
}

export async function bridgeExists(bridge: string): Promise<boolean> {
  try {
    const { stdout } = await run('ip', ['-j', 'link', 'show', 'dev', bridge, 'type', 'bridge'], { timeoutMs: 5000 });
    return (JSON.parse(stdout) as unknown[]).length > 0;
  } catch {
    return false;
  }
}

export async function createTap(tap: string, bridge: string): Promise<void> {
  if (!(await bridgeExists(bridge))) {
    throw new FerryError(
      'E_BRIDGE_NOT_FOUND',
      `Cannot connect to bridge '${bridge}': there is no such Linux bridge on this host; ` +
        `create it (ip link add ${bridge} type bridge) or fix the switch`,
      {},
    );
  }
  const u = qemuUser();
  const refused = u ? await tunRefusal(u) : null;
  if (refused) {
    throw new FerryError(
      'E_TAP',
      `Cannot connect to bridge '${bridge}': ${refused}; give it read and write as Debian's udev does ` +
        `(chmod 0666 ${TUN}), or run QEMU as root (unset qemu.user)`,
      { context: { bridge } },
    );
  }
  await deleteTap(tap); // a stale one from a crash
  try {
    // QEMU attaches to the tap (TUNSETIFF) as its own user when it has one (qemu.user).
    const owner = u ? ['user', String(u.uid), 'group', String(u.gid)] : [];
    await run('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap', ...owner], { timeoutMs: 5000 });
    await run('ip', ['link', 'set', 'dev', tap, 'master', bridge], { timeoutMs: 5000 });
    await run('ip', ['link', 'set', 'dev', tap, 'up'], { timeoutMs: 5000 });
  } catch (err) {
    await deleteTap(tap);
    throw new FerryError(
      'E_TAP',
      `Cannot create tap ${tap} on bridge '${bridge}': ${messageOf(err)}; the agent needs CAP_NET_ADMIN`,
      { cause: err },
    );
  }
}

export async function deleteTap(tap: string): Promise<void> {
  await run('ip', ['link', 'del', 'dev', tap], { timeoutMs: 5000 }).catch(() => undefined);
}
