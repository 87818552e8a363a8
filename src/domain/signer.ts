// The admin machine's side of enrolment: sign host certificate requests (the key stays on
// the host), keep the inventory of enrolled hosts and their serials, revoke, and publish the
// revocation list. Signing goes through `openssl ca` with a database beside the CA
// (db/index.txt), which is what `openssl ca -gencrl` builds the CRL from.
import crypto, { X509Certificate } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, InvalidInputError, NotFoundError } from '../errors.js';
import { NAME_RE } from '../api/common.js';
import { run } from '../util/exec.js';
import type { DomainInfo } from './ca.js';
import { exists, writeAtomic } from './request.js';
import {
  readInventory,
  readTokens,
  withDomainLock,
  writeInventory,
  writeTokens,
  type HostRecord,
  type Inventory,
  type Tokens,
} from './store.js';
import { addressProblem, caFingerprint, normSerial, readCrl, readCsr, spkiSha256, type CsrInfo } from './x509.js';
import { encodeToken, newSecret, newTokenId, parseChallenge, tokenProof, TokenRefusedError } from './token.js';

import { DEFAULT_ADMIN_DAYS, DEFAULT_HOST_DAYS, MAX_HOST_DAYS } from './lifetimes.js';

export { DEFAULT_ADMIN_DAYS, DEFAULT_HOST_DAYS, MAX_HOST_DAYS };
/** How long a CRL is valid; `ferry domain renew` publishes a new one when less than CRL_REFRESH_DAYS are left. */
export const CRL_DAYS = 365;
export const CRL_REFRESH_DAYS = 60;
export const DEFAULT_PORT = 7443;

export const crlFile = (domainDir: string): string => path.join(domainDir, 'crl.pem');

interface Pki {
  db: string;
  cnf: string;
  certs: string;
}

/** The openssl CA database beside the CA (created on first use, also for older domains). */
async function ensureDb(domain: DomainInfo): Promise<Pki> {
  const db = path.join(domain.dir, 'db');
  const certs = path.join(db, 'certs');
  await fsp.mkdir(certs, { recursive: true, mode: 0o700 });
  const index = path.join(db, 'index.txt');
  if (!(await exists(index))) await fsp.writeFile(index, '', { mode: 0o600 });
  // Renewals certify the same subject again.
  await fsp.writeFile(path.join(db, 'index.txt.attr'), 'unique_subject = no\n', { mode: 0o600 });
  const crlnumber = path.join(db, 'crlnumber');
  if (!(await exists(crlnumber))) await fsp.writeFile(crlnumber, '1000\n', { mode: 0o600 });
  const cnf = path.join(db, 'openssl.cnf');
  await fsp.writeFile(
    cnf,
    [
      '[ca]',
      'default_ca = ferry',
      '[ferry]',
      `database = ${index}`,
      `new_certs_dir = ${certs}`,
      `certificate = ${domain.caCert}`,
      `private_key = ${domain.caKey}`,
      `crlnumber = ${crlnumber}`,
      'rand_serial = yes',
      'default_md = sha256',
      'policy = policy_any',
      'unique_subject = no',
      // Nothing the requester asked for is copied: the signer decides every extension.
      'copy_extensions = none',
      'email_in_dn = no',
      `default_crl_days = ${CRL_DAYS}`,
      'crl_extensions = crl_ext',
      '[policy_any]',
      'organizationName = optional',
      'organizationalUnitName = optional',
      'commonName = supplied',
      '[crl_ext]',
      'authorityKeyIdentifier = keyid:always',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  return { db, cnf, certs };
}

/** Signs a request with a subject and extensions the signer chose; returns the certificate PEM. */
async function caSign(
  pki: Pki,
  csrPem: string,
  subject: string,
  ext: string[],
  days: number,
  signal?: AbortSignal,
): Promise<string> {
  const tag = `${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  const csr = path.join(pki.db, `req.tmp-${tag}`);
  const extFile = path.join(pki.db, `ext.tmp-${tag}`);
  const out = path.join(pki.db, `cert.tmp-${tag}`);
  const index = path.join(pki.db, 'index.txt');
  const before = await fsp.readFile(index, 'utf8');
  try {
    await fsp.writeFile(csr, csrPem, { mode: 0o600 });
    await fsp.writeFile(extFile, ['[ext]', ...ext, ''].join('\n'), { mode: 0o600 });
    await run(
      'openssl',
      [
        'ca',
        '-batch',
        '-config',
        pki.cnf,
        '-in',
        csr,
        '-out',
        out,
        '-days',
        String(days),
        '-subj',
        subject,
        '-preserveDN',
        '-notext',
        '-extfile',
        extFile,
        '-extensions',
        'ext',
      ],
      { signal, timeoutMs: 30_000 },
    );
    return await fsp.readFile(out, 'utf8');
  } catch (err) {
    await fsp.writeFile(index, before); // nothing half-recorded
    throw err;
  } finally {
    for (const f of [csr, extFile, out]) await fsp.rm(f, { force: true });
  }
}

/** Undoes a signature whose records could not be written: the database forgets it. */
async function forgetSigned(pki: Pki, indexBefore: string, serial: string): Promise<void> {
  await fsp.writeFile(path.join(pki.db, 'index.txt'), indexBefore);
  for (const f of await fsp.readdir(pki.certs))
    if (normSerial(f.replace(/\.pem$/, '')) === normSerial(serial))
      await fsp.rm(path.join(pki.certs, f), { force: true });
}

export interface SignHostOptions {
  /** Certificate lifetime in days (default 30). */
  days?: number;
  /** Replace the certificate of an enrolled host (renewal). */
  renew?: boolean;
  /** The agent's port when the request does not say (default 7443). */
  port?: number;
  /** The request must be for this host (renewal: the request came from this host's agent). */
  expectName?: string;
  now?: Date;
  signal?: AbortSignal;
}

export interface SignedHost {
  name: string;
  address: string;
  port: number;
  endpoint: string;
  serial: string;
  notBefore: string;
  notAfter: string;
  /** Host certificate then CA certificate: what `ferry host install-cert` takes. */
  bundle: string;
  caFingerprint: string;
  /** The join token the request used, if any. */
  tokenId: string | null;
}

interface CheckedRequest {
  csr: CsrInfo;
  name: string;
  address: string;
  port: number;
  ips: string[];
  dns: string[];
}

/** Everything about the request itself (no domain state): key type, name, addresses, endpoint. */
function checkRequest(csr: CsrInfo, o: SignHostOptions): CheckedRequest {
  const name = csr.commonName ?? '';
  if (!NAME_RE.test(name))
    throw new InvalidInputError(
      `Cannot sign the request: its name '${name}' is not a host name (letters, digits, dot, ` +
        `dash or underscore); make it with 'ferry host init NAME'`,
    );
  if (o.expectName && name !== o.expectName)
    throw new InvalidInputError(
      `Cannot sign the request from host '${o.expectName}': it asks for the name '${name}'; ` +
        `a host may only renew its own certificate`,
      { host: o.expectName, asked: name },
    );
  if (csr.keyKind !== 'prime256v1')
    throw new InvalidInputError(
      `Cannot sign the request for '${name}': its key is ${csr.keyKind}, not EC P-256; ` +
        `make the request with 'ferry host init'`,
    );
  for (const a of [...csr.ips, ...csr.dns]) {
    const p = addressProblem(a);
    if (p) throw new InvalidInputError(`Cannot sign the request for '${name}': its address '${a}' is not usable: ${p}`);
  }
  if (!csr.ips.length && !csr.dns.filter((d) => d !== name).length)
    throw new InvalidInputError(
      `Cannot sign the request for '${name}': it names no address; ` +
        `make it with 'ferry host init ${name} --address ADDR'`,
    );
  if (csr.uris.length > 1)
    throw new InvalidInputError(
      `Cannot sign the request for '${name}': it names ${csr.uris.length} endpoints; one at most`,
    );
  let address = csr.ips[0] ?? csr.dns.find((d) => d !== name) ?? name;
  let port = o.port ?? DEFAULT_PORT;
  if (csr.uris[0]) {
    let u: URL;
    try {
      u = new URL(csr.uris[0]);
    } catch {
      throw new InvalidInputError(`Cannot sign the request for '${name}': its endpoint '${csr.uris[0]}' is not a URL`);
    }
    const host = u.hostname.replace(/^\[|\]$/g, '');
    if (u.protocol !== 'https:' || u.pathname !== '/' || !u.port || ![...csr.ips, ...csr.dns].includes(host))
      throw new InvalidInputError(
        `Cannot sign the request for '${name}': its endpoint '${csr.uris[0]}' must be https://ADDRESS:PORT ` +
          'with one of its own addresses',
      );
    address = host;
    port = o.port ?? Number(u.port);
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new InvalidInputError(`Cannot sign the request for '${name}': port ${port} is not 1 to 65535`);
  return { csr, name, address, port, ips: csr.ips, dns: csr.dns.filter((d) => d !== name) };
}

/** A join token's proof in the request: known, unused, unexpired, for this name and address. */
function checkToken(req: CheckedRequest, challenge: string, tokens: Tokens, now: Date): Tokens['tokens'][number] {
  const { id, proof } = parseChallenge(challenge);
  const t = tokens.tokens.find((x) => x.id === id);
  const again = `create a new one with 'ferry domain token ${req.name} --address ${req.address}'`;
  if (!t)
    throw new TokenRefusedError(
      `Cannot sign the request for '${req.name}': its join token (${id}) was not made by this domain; ` +
        `${again} on this admin machine`,
    );
  if (t.usedAt || !t.secret)
    throw new TokenRefusedError(
      `Cannot sign the request for '${req.name}': its join token (${id}) was used already (${t.usedAt}, ` +
        `certificate ${t.usedSerial}); a token enrols one host once; ${again}`,
      { token: id },
    );
  if (new Date(t.expiresAt) <= now)
    throw new TokenRefusedError(
      `Cannot sign the request for '${req.name}': its join token (${id}) expired at ${t.expiresAt}; ${again}`,
      { token: id },
    );
  if (t.name !== req.name)
    throw new TokenRefusedError(
      `Cannot sign the request for '${req.name}': its join token (${id}) is for host '${t.name}', ` +
        `not '${req.name}'; join with the token made for this host`,
      { token: id },
    );
  if (t.address !== req.address)
    throw new TokenRefusedError(
      `Cannot sign the request for '${req.name}': ` +
        `it names address ${req.address} but its join token is for ${t.address}; ${again}`,
      { token: id },
    );
  const want = tokenProof(t.secret, req.name, req.csr.publicKey);
  if (!crypto.timingSafeEqual(Buffer.from(want), Buffer.from(proof)))
    throw new TokenRefusedError(
      `Cannot sign the request for '${req.name}': it does not prove it holds join token ${id} (wrong secret); ` +
        `join with the token exactly as printed`,
      { token: id },
    );
  return t;
}

function hostExtensions(req: CheckedRequest): string[] {
  const sans = [`DNS:${req.name}`, ...req.dns.map((d) => `DNS:${d}`), ...req.ips.map((ip) => `IP:${ip}`)];
  return [
    'basicConstraints = critical,CA:FALSE',
    'keyUsage = critical,digitalSignature,keyAgreement',
    'extendedKeyUsage = serverAuth,clientAuth',
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid',
    `subjectAltName = ${[...new Set(sans)].join(',')}`,
  ];
}

export async function isEnrolled(domain: DomainInfo, name: string): Promise<boolean> {
  return (await readInventory(domain.dir)).hosts.some((h) => h.name === name && h.state === 'enrolled');
}

/**
 * Signs a host's request: checks it (signature, key, name, addresses, endpoint, a join
 * token's proof), refuses a name already enrolled (unless renewing) and a key another host
 * holds, then signs a short-lived certificate and records it. Nothing is recorded when any
 * check fails.
 */
export async function signHostRequest(
  domain: DomainInfo,
  csrPem: string,
  o: SignHostOptions = {},
): Promise<SignedHost> {
  const days = o.days ?? DEFAULT_HOST_DAYS;
  if (!Number.isInteger(days) || days < 1 || days > MAX_HOST_DAYS)
    throw new InvalidInputError(
      `Cannot sign for ${days} days: give 1 to ${MAX_HOST_DAYS} (default ${DEFAULT_HOST_DAYS})`,
    );
  const req = checkRequest(await readCsr(csrPem, { signal: o.signal }), o);
  const now = o.now ?? new Date();
  const caPem = await fsp.readFile(domain.caCert, 'utf8');
  return withDomainLock(domain.dir, async () => {
    const inv = await readInventory(domain.dir);
    const tokens = await readTokens(domain.dir);
    const token = req.csr.challenge ? checkToken(req, req.csr.challenge, tokens, now) : null;
    const rec = inv.hosts.find((h) => h.name === req.name);
    const current = rec?.certificates.filter((c) => !c.revokedAt).at(-1);
    const held = current ? ` (certificate ${current.serial}, valid until ${current.notAfter})` : '';
    if (rec?.state === 'enrolled' && !o.renew)
      throw new FerryError(
        'E_HOST_EXISTS',
        `Cannot sign the request for '${req.name}': a host of that name is enrolled already${held}; ` +
          "to give it a new certificate use 'ferry domain sign --renew', " +
          `to enrol another machine under this name revoke the old one first ('ferry domain revoke ${req.name}')`,
        { context: { host: req.name } },
      );
    if (o.renew && rec?.state !== 'enrolled')
      throw new FerryError(
        'E_HOST_NOT_FOUND',
        `Cannot renew the certificate of '${req.name}': ` +
          `it is ${rec ? 'revoked' : 'not enrolled'} in this domain; ` +
          `enrol it with 'ferry domain sign' without --renew`,
        { context: { host: req.name } },
      );
    const keyId = spkiSha256(req.csr.publicKey);
    for (const h of inv.hosts)
      for (const c of h.certificates) {
        if (c.publicKey !== keyId) continue;
        if (h.name !== req.name)
          throw new InvalidInputError(
            `Cannot sign the request for '${req.name}': its key is certified for host '${h.name}' already; ` +
              `every host makes its own key ('ferry host init' on it)`,
          );
        if (c.revokedAt)
          throw new InvalidInputError(
            `Cannot sign the request for '${req.name}': its key was revoked (${c.revokedAt}); ` +
              `make a new request on the host`,
          );
      }
    const pki = await ensureDb(domain);
    const indexBefore = await fsp.readFile(path.join(pki.db, 'index.txt'), 'utf8');
    const certPem = await caSign(
      pki,
      csrPem,
      `/O=ferry-domain-${domain.id}/OU=ferry-host/CN=${req.name}`,
      hostExtensions(req),
      days,
      o.signal,
    );
    const cert = new X509Certificate(certPem);
    const record = {
      serial: normSerial(cert.serialNumber),
      notBefore: new Date(cert.validFrom).toISOString(),
      notAfter: new Date(cert.validTo).toISOString(),
      publicKey: keyId,
      revokedAt: null,
    };
    const next: Inventory = {
      ...inv,
      hosts: [
        ...inv.hosts.filter((h) => h.name !== req.name),
        {
          name: req.name,
          address: req.address,
          port: req.port,
          state: 'enrolled',
          enrolledAt: rec?.state === 'enrolled' ? rec.enrolledAt : now.toISOString(),
          certificates: [...(rec?.certificates ?? []), record],
        } satisfies HostRecord,
      ].sort((a, b) => a.name.localeCompare(b.name)),
    };
    try {
      if (token) {
        token.usedAt = now.toISOString();
        token.usedSerial = record.serial;
        token.secret = null;
        await writeTokens(domain.dir, tokens);
      }
      await writeInventory(domain.dir, next);
    } catch (err) {
      await forgetSigned(pki, indexBefore, record.serial);
      throw err;
    }
    const host = req.address.includes(':') ? `[${req.address}]` : req.address;
    return {
      name: req.name,
      address: req.address,
      port: req.port,
      endpoint: `https://${host}:${req.port}`,
      serial: record.serial,
      notBefore: record.notBefore,
      notAfter: record.notAfter,
      bundle: certPem.trimEnd() + '\n' + caPem.trimEnd() + '\n',
      caFingerprint: caFingerprint(caPem),
      tokenId: token?.id ?? null,
    };
  });
}

export interface AdminCredential {
  cert: string;
  key: string;
  ca: string;
  serial: string;
  notAfter: string;
}

/**
 * An admin credential: the admin's own key, made on the admin machine (`dir`, default
 * DOMAIN/admins), and a client-only certificate with OU ferry-admin.
 */
export async function issueAdminCredential(
  domain: DomainInfo,
  name: string,
  o: { dir?: string; days?: number; signal?: AbortSignal } = {},
): Promise<AdminCredential> {
  if (!NAME_RE.test(name))
    throw new InvalidInputError(
      `Cannot issue an admin credential for '${name}': use letters, digits, dot, dash or underscore`,
    );
  const dir = o.dir ?? path.join(domain.dir, 'admins');
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.crt`);
  if (await exists(key))
    throw new FerryError(
      'E_ADMIN_EXISTS',
      `Cannot issue an admin credential for '${name}': ${key} exists; choose another name or remove that credential`,
      {},
    );
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const tmpKey = `${key}.tmp-${process.pid}`;
  try {
    await fsp.writeFile(tmpKey, privateKey.export({ type: 'sec1', format: 'pem' }) as string, {
      mode: 0o600,
      flag: 'wx',
    });
    const { stdout: csr } = await run('openssl', ['req', '-new', '-key', tmpKey, '-subj', `/CN=${name}`], {
      signal: o.signal,
      timeoutMs: 20_000,
    });
    const pem = await withDomainLock(domain.dir, async () =>
      caSign(
        await ensureDb(domain),
        csr,
        `/O=ferry-domain-${domain.id}/OU=ferry-admin/CN=${name}`,
        [
          'basicConstraints = critical,CA:FALSE',
          'keyUsage = critical,digitalSignature,keyAgreement',
          'extendedKeyUsage = clientAuth',
          'authorityKeyIdentifier = keyid',
        ],
        o.days ?? DEFAULT_ADMIN_DAYS,
        o.signal,
      ),
    );
    await writeAtomic(cert, pem);
    await fsp.rename(tmpKey, key);
    const c = new X509Certificate(pem);
    return {
      cert,
      key,
      ca: domain.caCert,
      serial: normSerial(c.serialNumber),
      notAfter: new Date(c.validTo).toISOString(),
    };
  } finally {
    await fsp.rm(tmpKey, { force: true });
  }
}

/** Writes a new CRL from the database (caller holds the lock). */
async function writeCrl(domain: DomainInfo, pki: Pki, signal?: AbortSignal): Promise<string> {
  const tmp = `${crlFile(domain.dir)}.tmp-${process.pid}`;
  try {
    await run('openssl', ['ca', '-config', pki.cnf, '-gencrl', '-out', tmp], { signal, timeoutMs: 30_000 });
    await fsp.rename(tmp, crlFile(domain.dir));
  } finally {
    await fsp.rm(tmp, { force: true });
  }
  return fsp.readFile(crlFile(domain.dir), 'utf8');
}

/** The domain's CRL, made anew when missing or when less than CRL_REFRESH_DAYS of it are left. */
export async function currentCrl(domain: DomainInfo, o: { signal?: AbortSignal; now?: Date } = {}): Promise<string> {
  const caPem = await fsp.readFile(domain.caCert, 'utf8');
  const have = await fsp.readFile(crlFile(domain.dir), 'utf8').catch(() => null);
  if (have) {
    const info = await readCrl(have, caPem, o);
    const now = o.now ?? new Date();
    if (!info.nextUpdate || info.nextUpdate.getTime() - now.getTime() > CRL_REFRESH_DAYS * 86_400_000) return have;
  }
  return withDomainLock(domain.dir, async () => writeCrl(domain, await ensureDb(domain), o.signal));
}

export interface Revoked {
  host: HostRecord;
  serials: string[];
  crl: string;
}

/**
 * Revokes a host's certificates (all of them, or one serial: an old key that leaked) and
 * writes the new CRL. Revoking every certificate takes the host out of the domain.
 */
export async function revokeHost(
  domain: DomainInfo,
  name: string,
  o: { serial?: string; signal?: AbortSignal; now?: Date } = {},
): Promise<Revoked> {
  return withDomainLock(domain.dir, async () => {
    const inv = await readInventory(domain.dir);
    const rec = inv.hosts.find((h) => h.name === name);
    if (!rec)
      throw new NotFoundError(
        'E_HOST_NOT_FOUND',
        `Cannot revoke '${name}': no host of that name was enrolled in this domain; 'ferry domain show' lists them`,
        { host: name },
      );
    const want = o.serial ? normSerial(o.serial) : null;
    const targets = rec.certificates.filter((c) => !c.revokedAt && (!want || c.serial === want));
    if (want && !rec.certificates.some((c) => c.serial === want))
      throw new NotFoundError(
        'E_CERT_NOT_FOUND',
        `Cannot revoke certificate ${o.serial} of '${name}': ` +
          `the host has no such certificate (it has ${rec.certificates.map((c) => c.serial).join(', ')})`,
        { host: name },
      );
    const pki = await ensureDb(domain);
    const files = await fsp.readdir(pki.certs);
    const at = (o.now ?? new Date()).toISOString();
    for (const c of targets) {
      const f = files.find((x) => normSerial(x.replace(/\.pem$/, '')) === c.serial);
      if (!f)
        throw new FerryError(
          'E_DOMAIN_STATE',
          `Cannot revoke certificate ${c.serial} of '${name}': ${pki.certs} has no copy of it; ` +
            `restore the domain folder from a backup`,
        );
      await run(
        'openssl',
        ['ca', '-config', pki.cnf, '-revoke', path.join(pki.certs, f), '-crl_reason', 'keyCompromise'],
        {
          signal: o.signal,
          timeoutMs: 30_000,
        },
      );
      c.revokedAt = at;
    }
    if (!want || rec.certificates.every((c) => c.revokedAt)) rec.state = 'revoked';
    const crl = await writeCrl(domain, pki, o.signal);
    await writeInventory(domain.dir, inv);
    return { host: rec, serials: targets.map((c) => c.serial), crl };
  });
}

export interface MadeToken {
  token: string;
  id: string;
  expiresAt: string;
}

/** A one-time join token for NAME at ADDRESS:PORT (see token.ts). */
export async function createToken(
  domain: DomainInfo,
  o: { name: string; address: string; port?: number; ttlMs: number; now?: Date },
): Promise<MadeToken> {
  if (!NAME_RE.test(o.name))
    throw new InvalidInputError(
      `Cannot make a join token for '${o.name}': use letters, digits, dot, dash or underscore`,
    );
  const p = addressProblem(o.address);
  if (p) throw new InvalidInputError(`Cannot make a join token for '${o.name}' at '${o.address}': ${p}`);
  const port = o.port ?? DEFAULT_PORT;
  const now = o.now ?? new Date();
  const caPem = await fsp.readFile(domain.caCert, 'utf8');
  return withDomainLock(domain.dir, async () => {
    const inv = await readInventory(domain.dir);
    if (inv.hosts.some((h) => h.name === o.name && h.state === 'enrolled'))
      throw new FerryError(
        'E_HOST_EXISTS',
        `Cannot make a join token for '${o.name}': a host of that name is enrolled already; ` +
          `revoke it first ('ferry domain revoke ${o.name}') or choose another name`,
        {},
      );
    const tokens = await readTokens(domain.dir);
    // Forget tokens that ended more than a week ago.
    const week = 7 * 86_400_000;
    tokens.tokens = tokens.tokens.filter((t) => now.getTime() - new Date(t.expiresAt).getTime() < week);
    const id = newTokenId();
    const secret = newSecret();
    const expiresAt = new Date(now.getTime() + o.ttlMs);
    tokens.tokens.push({
      id,
      name: o.name,
      address: o.address,
      port,
      createdAt: now.toISOString(),
      expiresAt: expiresAt.toISOString(),
      secret,
      usedAt: null,
      usedSerial: null,
    });
    await writeTokens(domain.dir, tokens);
    return {
      token: encodeToken({
        domainId: domain.id,
        id,
        name: o.name,
        address: o.address,
        port,
        caFingerprint: caFingerprint(caPem),
        expiresAt,
        secret,
      }),
      id,
      expiresAt: expiresAt.toISOString(),
    };
  });
}
