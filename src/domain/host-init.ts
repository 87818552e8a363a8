// `ferry host init` / `ferry host join` on a host: the agent's configuration file
// (/etc/ferry/agent.json: name, listen, dataDir, migrationAddress, tlsDir, qemu.user when the
// package's ferry-qemu exists, as `ferry agent --config` reads it) and the host's key and
// certificate request in its TLS folder.
// Everything is checked before anything is written, and a failure removes what was made.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { isIP } from 'node:net';
import { FerryError, InvalidInputError } from '../errors.js';
import { NAME_RE } from '../api/common.js';
import { exists, makeRequest, TLS_FILES, writeAtomic, writeEnrolState } from './request.js';
import { addressProblem } from './x509.js';
import { challengeFor, decodeToken, tokenProof, TokenRefusedError } from './token.js';
import { DEFAULT_QEMU_USER, lookupQemuUser } from '../qemu/user.js';

import { DEFAULT_CONFIG, DEFAULT_DATA_DIR, DEFAULT_TLS_DIR } from './host-paths.js';

export { DEFAULT_CONFIG, DEFAULT_DATA_DIR, DEFAULT_TLS_DIR };

export interface HostInitOptions {
  name: string;
  address: string;
  port: number;
  config: string;
  tlsDir: string;
  dataDir: string;
  /** ADDR:PORT the agent listens on (default: the address and port). */
  listen?: string;
  migrationAddress?: string;
  /** More IP addresses for the certificate (e.g. the migration network's). */
  extraIps?: string[];
  /** Pin the domain's CA (sha256 hex, colons allowed): a certificate from another CA is refused. */
  caFingerprint?: string;
  /** A join token (ferry host join). */
  token?: { id: string; secret: string };
  signal?: AbortSignal;
}

export interface HostInitResult {
  csr: string;
  csrFile: string;
  keyFile: string;
  config: string;
}

function fmtHost(a: string): string {
  return a.includes(':') ? `[${a}]` : a;
}

async function readConfig(file: string): Promise<Record<string, unknown> | null> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    return null;
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    /* below */
  }
  throw new InvalidInputError(`Cannot set up this host: ${file} is not a JSON object; fix or remove it`, { file });
}

/** The TLS folder an agent configuration names (install-cert finds the key through it). */
export async function tlsDirOf(config: string): Promise<string | null> {
  const c = await readConfig(config);
  return typeof c?.tlsDir === 'string' ? c.tlsDir : null;
}

export async function initHost(o: HostInitOptions): Promise<HostInitResult> {
  if (!NAME_RE.test(o.name))
    throw new InvalidInputError(
      `Cannot set up host '${o.name}': names are 1–63 letters, digits, dot, dash or underscore, ` +
        `starting with a letter or digit`,
    );
  const p = addressProblem(o.address);
  if (p) throw new InvalidInputError(`Cannot set up host '${o.name}' at '${o.address}': ${p}`);
  const fp = o.caFingerprint?.replace(/:/g, '').toLowerCase();
  if (fp !== undefined && !/^[0-9a-f]{64}$/.test(fp))
    throw new InvalidInputError(
      `Cannot use --ca-fingerprint '${o.caFingerprint}': ` +
        `give the SHA-256 fingerprint 'ferry domain show' prints (64 hex digits)`,
    );
  const listen = o.listen ?? `${isIP(o.address) ? fmtHost(o.address) : '0.0.0.0'}:${o.port}`;
  if (!/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.test(listen))
    throw new InvalidInputError(`Cannot use --listen '${listen}': expected ADDRESS:PORT such as 0.0.0.0:7443`);
  const migrationAddress = o.migrationAddress ?? (isIP(o.address) ? o.address : undefined);
  for (const d of [o.config, o.tlsDir, o.dataDir])
    if (!path.isAbsolute(d)) throw new InvalidInputError(`Cannot set up this host: '${d}' is not an absolute path`);
  const existing = await readConfig(o.config);
  if (existing && typeof existing.name === 'string' && existing.name !== o.name)
    throw new FerryError(
      'E_HOST_INITIALISED',
      `Cannot set up host '${o.name}': ${o.config} is the configuration of host '${existing.name}'; ` +
        `a machine is one host (remove the file to start over)`,
      {},
    );
  if (await exists(path.join(o.tlsDir, TLS_FILES.cert)))
    throw new FerryError(
      'E_HOST_INITIALISED',
      `Cannot set up host '${o.name}': ${path.join(o.tlsDir, TLS_FILES.cert)} exists (this host is enrolled); ` +
        `its agent renews its certificate itself, and to start over remove ${o.tlsDir} and ${o.config}`,
      {},
    );
  const token = o.token;
  const made = await makeRequest({
    dir: o.tlsDir,
    name: o.name,
    address: o.address,
    port: o.port,
    ...(o.extraIps ? { extraIps: o.extraIps } : {}),
    ...(token ? { challenge: (k) => challengeFor(token.id, tokenProof(token.secret, o.name, k)) } : {}),
    ...(o.signal ? { signal: o.signal } : {}),
  });
  try {
    await writeEnrolState(o.tlsDir, {
      name: o.name,
      address: o.address,
      port: o.port,
      caFingerprint: fp ?? null,
      createdAt: new Date().toISOString(),
    });
    // Keep what an installer or admin put there (pools, cluster, port range, QEMU's user); set
    // ours. QEMU runs as the package's unprivileged user unless the file says otherwise.
    const qemu =
      existing?.qemu === undefined && (await lookupQemuUser(DEFAULT_QEMU_USER, o.signal ? { signal: o.signal } : {}))
        ? { qemu: { user: DEFAULT_QEMU_USER } }
        : {};
    const config = {
      ...(existing ?? {}),
      name: o.name,
      listen,
      dataDir: o.dataDir,
      ...(migrationAddress ? { migrationAddress } : {}),
      tlsDir: o.tlsDir,
      ...qemu,
    };
    await fsp.mkdir(path.dirname(o.config), { recursive: true });
    await writeAtomic(o.config, JSON.stringify(config, null, 2) + '\n', 0o644);
  } catch (err) {
    for (const f of [made.keyFile, made.csrFile, path.join(o.tlsDir, TLS_FILES.enrol)])
      await fsp.rm(f, { force: true });
    throw err;
  }
  return { csr: made.csr, csrFile: made.csrFile, keyFile: made.keyFile, config: o.config };
}

/** `ferry host join TOKEN`: set up with the token's name, address and port, CA pinned, proof in the request. */
export async function joinHost(
  token: string,
  o: Omit<HostInitOptions, 'name' | 'address' | 'port' | 'caFingerprint' | 'token'> & { name?: string },
): Promise<HostInitResult & { name: string; expiresAt: Date }> {
  const t = decodeToken(token);
  if (t.expiresAt <= new Date())
    throw new TokenRefusedError(
      `Cannot join with this token: it expired at ${t.expiresAt.toISOString()}; ` +
        `ask the admin for a new one ('ferry domain token ${t.name} --address ${t.address}')`,
    );
  if (o.name && o.name !== t.name)
    throw new TokenRefusedError(
      `Cannot join as '${o.name}': the token is for host '${t.name}'; use the token made for this host`,
    );
  const r = await initHost({
    ...o,
    name: t.name,
    address: t.address,
    port: t.port,
    caFingerprint: t.caFingerprint,
    token: { id: t.id, secret: t.secret },
  });
  return { ...r, name: t.name, expiresAt: t.expiresAt };
}
