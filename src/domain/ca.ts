// The Ferry domain: a certificate authority whose certificates are the only way in.
// Hosts and admins hold EC P-256 certificates it signed; the role is in the subject's OU
// (ferry-host / ferry-admin) and the domain's id in O, so a certificate from another
// domain fails the TLS handshake and a host certificate cannot act as an admin.
import fsp from 'node:fs/promises';
import path from 'node:path';
import crypto, { X509Certificate } from 'node:crypto';
import { FerryError, InvalidInputError, NotFoundError } from '../errors.js';
import { run } from '../util/exec.js';
import { NAME_RE } from '../vm/spec.js';

import type { Role } from '../api/common.js';
export type { Role };

export interface DomainInfo {
  dir: string;
  id: string;
  name: string;
  caCert: string;
  caKey: string;
}
export interface IssuedCert {
  cert: string;
  key: string;
  ca: string;
  name: string;
  role: Role;
}

const DAYS = 3650;

function caPaths(dir: string): { cert: string; key: string; meta: string } {
  return { cert: path.join(dir, 'ca.crt'), key: path.join(dir, 'ca.key'), meta: path.join(dir, 'domain.json') };
}

/** Creates a new domain (CA) in `dir`. Refuses to overwrite an existing one. */
export async function initDomain(dir: string, opts: { name?: string; signal?: AbortSignal } = {}): Promise<DomainInfo> {
  const p = caPaths(dir);
  if (
    await fsp.access(p.key).then(
      () => true,
      () => false,
    )
  ) {
    throw new FerryError(
      'E_DOMAIN_EXISTS',
      `Cannot create a domain in ${dir}: it already holds one (ca.key); use that domain or choose another folder`,
      { context: { dir } },
    );
  }
  const name = opts.name ?? 'ferry';
  if (!NAME_RE.test(name))
    throw new InvalidInputError(
      `Cannot create domain '${name}': the name must be letters, digits, dot, dash or underscore`,
      { name },
    );
  const id = crypto.randomUUID();
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  await run('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', p.key], { signal: opts.signal });
  await fsp.chmod(p.key, 0o600);
  await run(
    'openssl',
    [
      'req',
      '-x509',
      '-new',
      '-key',
      p.key,
      '-sha256',
      '-days',
      String(DAYS),
      '-out',
      p.cert,
      '-subj',
      `/O=ferry-domain-${id}/OU=ferry-ca/CN=${name} CA`,
      '-addext',
      'basicConstraints=critical,CA:TRUE,pathlen:0',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    { signal: opts.signal },
  );
  await fsp.writeFile(p.meta, JSON.stringify({ id, name }, null, 2) + '\n');
  return { dir, id, name, caCert: p.cert, caKey: p.key };
}

export async function loadDomain(dir: string): Promise<DomainInfo> {
  const p = caPaths(dir);
  try {
    const meta = JSON.parse(await fsp.readFile(p.meta, 'utf8')) as { id: string; name: string };
    await fsp.access(p.key);
    return { dir, id: meta.id, name: meta.name, caCert: p.cert, caKey: p.key };
  } catch {
    throw new NotFoundError(
      'E_DOMAIN_NOT_FOUND',
      `Cannot use the domain in ${dir}: no CA there; create one with 'ferry domain init ${dir}'`,
      { dir },
    );
  }
}

/**
 * Issues a certificate. Hosts get server+client usage and SANs (their name, plus any
 * addresses they listen on); admins get client usage only.
 */
export async function issueCert(
  domain: DomainInfo,
  role: Role,
  name: string,
  opts: { outDir?: string; ips?: string[]; dnsNames?: string[]; days?: number; signal?: AbortSignal } = {},
): Promise<IssuedCert> {
  if (!NAME_RE.test(name))
    throw new InvalidInputError(
      `Cannot issue a ${role} certificate for '${name}': the name must be letters, digits, dot, dash or underscore`,
      { name },
    );
  const outDir = opts.outDir ?? path.join(domain.dir, role === 'host' ? 'hosts' : 'admins');
  await fsp.mkdir(outDir, { recursive: true, mode: 0o700 });
  const key = path.join(outDir, `${name}.key`);
  const cert = path.join(outDir, `${name}.crt`);
  const csr = path.join(outDir, `${name}.csr`);
  const ext = path.join(outDir, `${name}.ext`);
  const sans =
    role === 'host'
      ? [
          `DNS:${name}`,
          ...(opts.dnsNames ?? []).map((d) => `DNS:${d}`),
          ...['127.0.0.1', ...(opts.ips ?? [])].map((ip) => `IP:${ip}`),
        ]
      : [];
  const extLines = [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature,keyAgreement',
    `extendedKeyUsage=${role === 'host' ? 'serverAuth,clientAuth' : 'clientAuth'}`,
    ...(sans.length ? [`subjectAltName=${[...new Set(sans)].join(',')}`] : []),
  ];
  try {
    await run('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key], { signal: opts.signal });
    await fsp.chmod(key, 0o600);
    await run(
      'openssl',
      ['req', '-new', '-key', key, '-out', csr, '-subj', `/O=ferry-domain-${domain.id}/OU=ferry-${role}/CN=${name}`],
      { signal: opts.signal },
    );
    await fsp.writeFile(ext, extLines.join('\n') + '\n');
    await run(
      'openssl',
      [
        'x509',
        '-req',
        '-in',
        csr,
        '-CA',
        domain.caCert,
        '-CAkey',
        domain.caKey,
        '-CAcreateserial',
        '-out',
        cert,
        '-days',
        String(opts.days ?? DAYS),
        '-sha256',
        '-extfile',
        ext,
      ],
      { signal: opts.signal },
    );
  } finally {
    await fsp.rm(csr, { force: true });
    await fsp.rm(ext, { force: true });
  }
  return { cert, key, ca: domain.caCert, name, role };
}

export interface PeerIdentity {
  role: Role;
  name: string;
  domainId: string;
}

/** Role and name from a verified peer certificate's subject (fields joined by newlines or commas). */
export function identityFromSubject(subject: Record<string, string | string[] | undefined>): PeerIdentity | null {
  const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);
  const ou = one(subject.OU);
  const cn = one(subject.CN);
  const o = one(subject.O);
  if (!cn || !o?.startsWith('ferry-domain-')) return null;
  if (ou === 'ferry-host') return { role: 'host', name: cn, domainId: o.slice('ferry-domain-'.length) };
  if (ou === 'ferry-admin') return { role: 'admin', name: cn, domainId: o.slice('ferry-domain-'.length) };
  return null;
}

/** The domain id a CA certificate belongs to. */
export function domainIdOfCa(pem: string): string | null {
  const c = new X509Certificate(pem);
  const m = /O=ferry-domain-([0-9a-f-]+)/.exec(c.subject);
  return m?.[1] ?? null;
}
