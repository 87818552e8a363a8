// /etc/ferry/agent.json: the configuration of an installed host (`ferry agent --config FILE`,
// the systemd unit's ExecStart). Strict: a field Ferry does not know, or a malformed value,
// stops the agent with a message naming the field and exit code 2 (which the unit does not
// restart), so a typo never becomes a crash loop or a silently ignored setting.
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import * as z from 'zod';
import { InvalidInputError } from '../errors.js';
import { Name } from '../api/schemas.js';
import { AgentFile, parseListen } from './config.js';
import { DEFAULT_MIGRATION_PORTS, assertExcludes, parsePortRange } from './ports.js';

export { DEFAULT_CONFIG as HOST_CONFIG_FILE } from '../domain/host-paths.js';
/** The agent's port on installed hosts (open it to admins, consoles and the other hosts). */
export const AGENT_PORT = 7443;

const absPath = z
  .string()
  .refine((p) => path.isAbsolute(p) && !p.includes('\0'), { message: 'must be an absolute path' });

/** ADDRESS or ADDRESS:PORT (port 7443 when left out). */
const Listen = z.string().transform((s, ctx) => {
  for (const candidate of [s, `${net.isIPv6(s) ? `[${s}]` : s}:${AGENT_PORT}`]) {
    try {
      const l = parseListen(candidate);
      return `${l.host.includes(':') ? `[${l.host}]` : l.host}:${l.port}`;
    } catch {
      /* try the next form */
    }
  }
  ctx.addIssue({ code: 'custom', message: `must be ADDRESS or ADDRESS:PORT, such as 0.0.0.0:${AGENT_PORT}` });
  return z.NEVER;
});

export const HostConfigFile = z
  .object({
    /** The host's name: its certificate's CN. */
    name: Name,
    listen: Listen.default(`0.0.0.0:${AGENT_PORT}`),
    dataDir: absPath.default('/var/lib/ferry'),
    /** Where other hosts connect for migration streams and NBD (default: the address their request came in on). */
    migrationAddress: z
      .string()
      .refine((a) => net.isIP(a) !== 0 || /^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$/.test(a), {
        message: 'must be an IP address or a host name',
      })
      .optional(),
    /** Folder with ca.crt, host.crt and host.key. */
    tlsDir: absPath.default('/etc/ferry/tls'),
    migrationPorts: z
      .string()
      .refine((r) => safe(() => parsePortRange(r, 'migrationPorts')), {
        message: `must be a range FROM-TO of unprivileged ports, such as ${DEFAULT_MIGRATION_PORTS}`,
      })
      .default(DEFAULT_MIGRATION_PORTS),
    pools: AgentFile.shape.pools,
    cluster: AgentFile.shape.cluster,
    switches: AgentFile.shape.switches,
    qemu: AgentFile.shape.qemu,
  })
  .strict();
export type HostConfig = z.infer<typeof HostConfigFile>;

function safe(f: () => unknown): boolean {
  try {
    f();
    return true;
  } catch {
    return false;
  }
}

/** Reads and checks the file; every problem is an InvalidInputError (exit code 2) naming the field. */
export async function loadHostConfig(file: string): Promise<HostConfig> {
  const fix = 'fix it and start the agent again';
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InvalidInputError(
      code === 'ENOENT'
        ? `Cannot start the agent: ${file} does not exist; ` +
            "create it with 'ferry host init NAME --address ADDRESS' (see docs/install.md)"
        : `Cannot start the agent: cannot read ${file} (${code ?? String(err)}); check its permissions`,
      { file },
      err,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new InvalidInputError(
      `Cannot start the agent: ${file} is not valid JSON (${(err as Error).message}); ${fix}`,
      { file },
      err,
    );
  }
  const r = HostConfigFile.safeParse(raw);
  if (!r.success) {
    const known = Object.keys(HostConfigFile.shape).join(', ');
    const parts = r.error.issues.slice(0, 3).map((iss) => {
      const field = iss.path.map(String).join('.');
      if (iss.code === 'unrecognized_keys') {
        const names = iss.keys.map((k) => `'${field ? `${field}.${k}` : k}'`).join(', ');
        return `field ${names} is not a setting Ferry knows${field ? '' : ` (known: ${known})`}`;
      }
      const value = valueAt(raw, iss.path);
      const shown = value === undefined ? 'missing' : JSON.stringify(value).slice(0, 60);
      return `field '${field || '(file)'}' (${shown}) ${iss.message.replace(/^Invalid (input|option): /, '')}`;
    });
    throw new InvalidInputError(
      `Cannot start the agent: ${file}: ${parts.join('; ')}; ${fix}`,
      {
        file,
        issues: r.error.issues.map((i) => ({ field: i.path.map(String).join('.'), message: i.message })),
      },
      r.error,
    );
  }
  const cfg = r.data;
  const port = parseListen(cfg.listen).port;
  try {
    assertExcludes(parsePortRange(cfg.migrationPorts, 'migrationPorts'), port, 'migrationPorts');
  } catch (err) {
    throw new InvalidInputError(
      `Cannot start the agent: ${file}: field 'migrationPorts' (${JSON.stringify(cfg.migrationPorts)}) ` +
        `includes the agent's own port ${port} (field 'listen'); ` +
        `choose a range without it, such as ${DEFAULT_MIGRATION_PORTS}, and start the agent again`,
      { file },
      err,
    );
  }
  return cfg;
}

function valueAt(obj: unknown, p: readonly PropertyKey[]): unknown {
  let cur = obj;
  for (const k of p) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[k];
  }
  return cur;
}
