// The agent's configuration: flags, plus DATA/agent.json for what a lab or an installer
// writes once (extra pools). Everything else the agent keeps in its registry.
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as z from 'zod';
import { InvalidInputError } from '../errors.js';
import { Name } from '../api/schemas.js';
import { assertExcludes, parsePortRange, type PortRange } from './ports.js';

export const AgentFile = z
  .object({
    pools: z
      .array(
        z
          .object({
            name: Name,
            kind: z.enum(['local', 'shared']),
            path: z.string().refine((p) => path.isAbsolute(p), { message: 'must be an absolute path' }),
          })
          .strict(),
      )
      .default([]),
    /** The cluster this host belongs to (etcd client URLs). */
    cluster: z
      .object({
        name: Name,
        endpoints: z.array(z.url()).min(1),
        /** Failure detection: a node is down this long after it stops renewing its lease (default 5 s). */
        leaseSeconds: z.number().int().min(2).max(60).optional(),
        /**
         * How long the host's fence keeps the node lease while the agent's process is gone (a
         * restart), so its HA VMs run on (default 60 s; 0: fence as after a lease loss).
         */
        restartGraceSeconds: z.number().int().min(0).max(3600).optional(),
      })
      .strict()
      .optional(),
    /**
     * QEMU's user: a name (ferry-qemu, made by scripts/setup and the package) runs every QEMU
     * of this host as that user; absent or "root" keeps QEMU root (src/qemu/user.ts).
     */
    qemu: z
      .object({
        user: z
          .string()
          .regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'a system user name such as ferry-qemu')
          .optional(),
      })
      .strict()
      .optional(),
    /** Switches created on first start. */
    switches: z
      .array(
        z
          .object({ name: Name, kind: z.enum(['user', 'bridge']), bridge: z.string().nullable().default(null) })
          .strict(),
      )
      .default([]),
  })
  .strict();

export interface AgentConfig {
  name: string;
  dataDir: string;
  listen: { host: string; port: number };
  /** Address the destination listens on for migration streams. */
  migrationAddress: string;
  /** The host's TLS folder: CA, certificate, key, the domain's CRL (when pushed), renewal requests. */
  tls: { ca: string; cert: string; key: string; crl: string; renewDir: string };
  /** Ports for migration streams and NBD exports (null: any free port). */
  migrationPorts: PortRange | null;
  pools: Array<{ name: string; kind: 'local' | 'shared'; path: string }>;
  switches: Array<{ name: string; kind: 'user' | 'bridge'; bridge: string | null }>;
  cluster?: { name: string; endpoints: string[]; leaseSeconds?: number; restartGraceSeconds?: number };
  /** The user QEMU runs as; null: root. */
  qemuUser: string | null;
}

export function parseListen(s: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(s);
  const host = m?.[1];
  const port = Number(m?.[2]);
  if (host === undefined || port > 65535)
    throw new InvalidInputError(`Cannot listen on '${s}': expected ADDRESS:PORT such as 127.0.0.1:7443`, { listen: s });
  return { host: host.replace(/^\[|\]$/g, ''), port };
}

export async function loadAgentConfig(flags: {
  name: string;
  data: string;
  listen: string;
  migrationAddress?: string;
  tlsDir?: string;
  migrationPorts?: string;
  /** Settings of /etc/ferry/agent.json (`ferry agent --config`), merged with DATA/agent.json. */
  settings?: Partial<z.infer<typeof AgentFile>>;
}): Promise<AgentConfig> {
  if (!Name.safeParse(flags.name).success)
    throw new InvalidInputError(
      `Cannot start an agent named '${flags.name}': use letters, digits, dot, dash or underscore`,
      { name: flags.name },
    );
  const dataDir = path.resolve(flags.data);
  const listen = parseListen(flags.listen);
  const migrationPorts = flags.migrationPorts ? parsePortRange(flags.migrationPorts, 'migration ports') : null;
  if (migrationPorts) assertExcludes(migrationPorts, listen.port, 'migration ports');
  let file: z.infer<typeof AgentFile> = { pools: [], switches: [] };
  try {
    const raw = JSON.parse(await fsp.readFile(path.join(dataDir, 'agent.json'), 'utf8')) as unknown;
    const r = AgentFile.safeParse(raw);
    if (!r.success)
      throw new InvalidInputError(
        `Cannot read ${path.join(dataDir, 'agent.json')}: ` +
          r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '),
      );
    file = r.data;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const extra = flags.settings ?? {};
  if (extra.cluster && file.cluster && extra.cluster.name !== file.cluster.name)
    throw new InvalidInputError(
      `Cannot start agent '${flags.name}': its configuration names cluster '${extra.cluster.name}' but ` +
        `${path.join(dataDir, 'agent.json')} (written by 'ferry cluster join') names '${file.cluster.name}'; ` +
        'remove one of them',
    );
  const tlsDir = flags.tlsDir ? path.resolve(flags.tlsDir) : path.join(dataDir, 'tls');
  return {
    name: flags.name,
    dataDir,
    listen,
    migrationAddress: flags.migrationAddress ?? listen.host,
    tls: {
      ca: path.join(tlsDir, 'ca.crt'),
      cert: path.join(tlsDir, 'host.crt'),
      key: path.join(tlsDir, 'host.key'),
      crl: path.join(tlsDir, 'ca.crl'),
      renewDir: path.join(tlsDir, 'renew'),
    },
    migrationPorts,
    pools: [
      { name: 'local', kind: 'local', path: path.join(dataDir, 'pools', 'local') },
      ...(extra.pools ?? []),
      ...file.pools,
    ],
    switches: [...(extra.switches ?? []), ...file.switches],
    qemuUser: qemuUserOf(extra.qemu?.user ?? file.qemu?.user),
    ...((extra.cluster ?? file.cluster) ? { cluster: extra.cluster ?? file.cluster } : {}),
  };
}

/** `qemu.user`: absent or root keeps QEMU root. */
function qemuUserOf(user: string | undefined): string | null {
  return user === undefined || user === 'root' ? null : user;
}
