// The agent's part of running QEMU unprivileged: find the configured user, let it through
// the data folder to its VMs' run folders and the migration TLS files, and say in the log
// which user QEMU runs as. The agent itself stays root (bridges, taps, namespaces, scopes).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { letQemuThrough, lookupQemuUser, QemuUserError, setQemuUser, type QemuUser } from '../qemu/user.js';
import type { AgentConfig } from './config.js';

export async function applyQemuUser(
  cfg: Pick<AgentConfig, 'name' | 'dataDir' | 'qemuUser' | 'pools'>,
  logger: Pick<Logger, 'info' | 'warn'>,
  opts: { signal?: AbortSignal } = {},
): Promise<QemuUser | null> {
  if (cfg.qemuUser === null || process.getuid?.() !== 0) {
    setQemuUser(null);
    logger.info(
      { qemuUser: null },
      cfg.qemuUser === null
        ? 'QEMU runs as root with its seccomp sandbox on (qemu.user is not set)'
        : `QEMU runs as this agent's user: only a root agent can start QEMU as '${cfg.qemuUser}'`,
    );
    return null;
  }
  const u = await lookupQemuUser(cfg.qemuUser, opts);
  if (!u)
    throw new QemuUserError(
      `start agent '${cfg.name}'`,
      `qemu.user '${cfg.qemuUser}' does not exist`,
      `create it (scripts/setup and the package make ferry-qemu) or remove qemu.user to run QEMU as root`,
      { user: cfg.qemuUser },
    );
  setQemuUser(u);
  // The way to every run folder (DATA/run/<vm>) and the pools; the migration TLS folder
  // (DATA/tls/qemu) is opened up when it is laid out (src/migration/tls.ts).
  for (const dir of [cfg.dataDir, path.join(cfg.dataDir, 'run')]) {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    await letQemuThrough(dir);
  }
  for (const p of cfg.pools) {
    const inData = p.path.startsWith(cfg.dataDir + path.sep);
    if (inData) await fsp.mkdir(p.path, { recursive: true, mode: 0o750 });
    else if (!fs.existsSync(p.path)) continue; // an unmounted pool: checked when a VM uses it
    if (inData) await letQemuThrough(path.dirname(p.path));
    await letQemuThrough(p.path);
  }
  logger.info(
    { qemuUser: u.name, uid: u.uid, gid: u.gid, groups: u.groups },
    `QEMU runs as '${u.name}' (uid ${u.uid}) with its seccomp sandbox on`,
  );
  return u;
}
