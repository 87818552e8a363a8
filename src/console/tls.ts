// The console's HTTPS certificate: the one the admin gives (--cert/--key), or one issued
// for the console by the domain's CA when this context can reach the CA's key (a lab, or a
// context file whose ca.crt sits in the domain folder). The issued certificate is for
// server authentication only (OU ferry-console): agents accept no client certificate that
// is not a host's or an admin's, so the console's key is never a credential for an agent.
// It lives 30 days and is renewed when a third of that is left (at start and while running).
import crypto, { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { loadDomain, type DomainInfo } from '../domain/ca.js';
import { run } from '../util/exec.js';

const DAYS = 30;
const RENEW_BEFORE_MS = (DAYS / 3) * 86400_000;

export interface ConsoleTls {
  key: string;
  /** The certificate followed by its CA (browsers that pin the CA see it in the chain). */
  cert: string;
  /** Host names and addresses the certificate is valid for (normalised as URL hosts). */
  names: string[];
  expiresAt: Date;
  /** Where it came from, for the start-up line. */
  source: string;
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (net.isIPv4(host) && host.startsWith('127.'));
}

export function isWildcard(host: string): boolean {
  return host === '0.0.0.0' || host === '::';
}

/** A name as it appears in a URL's host (IPv6 in brackets, normalised). */
export function urlHost(name: string): string {
  return new URL(`https://${net.isIPv6(name) ? `[${name}]` : name}/`).hostname;
}

function sanNames(cert: X509Certificate): string[] {
  return (cert.subjectAltName ?? '')
    .split(/,\s*/)
    .map((s) => /^(?:DNS|IP Address):(.+)$/.exec(s.trim())?.[1])
    .filter((s): s is string => !!s)
    .map(urlHost);
}

function fail(message: string, cause?: unknown): FerryError {
  return new FerryError('E_CONSOLE_TLS', message, { cause });
}

/** The certificate and key the admin gave. */
export async function givenTls(certFile: string, keyFile: string): Promise<ConsoleTls> {
  let certPem: string;
  let keyPem: string;
  try {
    [certPem, keyPem] = await Promise.all([fsp.readFile(certFile, 'utf8'), fsp.readFile(keyFile, 'utf8')]);
  } catch (err) {
    throw fail(`Cannot serve the console over HTTPS: ${(err as Error).message}; check --cert and --key`, err);
  }
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
    if (!cert.checkPrivateKey(crypto.createPrivateKey(keyPem)))
      throw new Error(`the key in ${keyFile} does not belong to the certificate in ${certFile}`);
  } catch (err) {
    throw fail(
      `Cannot serve the console over HTTPS: ${(err as Error).message}; give a PEM certificate and its key`,
      err,
    );
  }
  const expiresAt = new Date(cert.validTo);
  if (expiresAt.getTime() <= Date.now())
    throw fail(`Cannot serve the console over HTTPS: the certificate in ${certFile} expired on ${cert.validTo}`);
  return { key: keyPem, cert: certPem, names: sanNames(cert), expiresAt, source: certFile };
}

/** The domain whose CA signed CA_FILE, when its key is beside it; else null. */
export async function reachableDomain(caFile: string): Promise<DomainInfo | null> {
  const dir = path.dirname(caFile);
  if (!fs.existsSync(path.join(dir, 'ca.key'))) return null;
  return loadDomain(dir).catch(() => null);
}

/** The names a console listening on HOST is reached by. */
export function consoleNames(listenHost: string): string[] {
  const names = new Set(['localhost', '127.0.0.1', '::1', os.hostname()]);
  if (isWildcard(listenHost)) {
    for (const list of Object.values(os.networkInterfaces()))
      for (const a of list ?? []) if (!a.internal && !a.address.startsWith('fe80:')) names.add(a.address);
  } else names.add(listenHost);
  return [...names].map(urlHost);
}

/**
 * A certificate for the console from the domain's CA, kept in DIR (console.crt, console.key):
 * reused while it is signed by this CA, names every wanted name and has a third of its life
 * left; issued anew otherwise.
 */
export async function domainTls(
  domain: DomainInfo,
  dir: string,
  wanted: string[],
  opts: { signal?: AbortSignal } = {},
): Promise<ConsoleTls> {
  const certFile = path.join(dir, 'console.crt');
  const keyFile = path.join(dir, 'console.key');
  const caPem = await fsp.readFile(domain.caCert, 'utf8');
  const ca = new X509Certificate(caPem);
  const current = await fsp
    .readFile(certFile, 'utf8')
    .then((pem) => new X509Certificate(pem))
    .catch(() => null);
  const fresh =
    current &&
    current.checkIssued(ca) &&
    current.verify(ca.publicKey) &&
    new Date(current.validTo).getTime() - Date.now() > RENEW_BEFORE_MS &&
    wanted.every((n) => sanNames(current).includes(urlHost(n))) &&
    fs.existsSync(keyFile);
  if (!fresh) await issue(domain, dir, wanted, opts.signal);
  const certPem = await fsp.readFile(certFile, 'utf8');
  const cert = new X509Certificate(certPem);
  return {
    key: await fsp.readFile(keyFile, 'utf8'),
    cert: certPem.trimEnd() + '\n' + caPem,
    names: sanNames(cert),
    expiresAt: new Date(cert.validTo),
    source: `the domain's CA (${certFile})`,
  };
}

async function issue(domain: DomainInfo, dir: string, names: string[], signal?: AbortSignal): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const tag = `${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  const key = path.join(dir, `console.key.${tag}`);
  const cert = path.join(dir, `console.crt.${tag}`);
  const csr = path.join(dir, `console.csr.${tag}`);
  const ext = path.join(dir, `console.ext.${tag}`);
  const sans = names.map((n) => (net.isIP(n.replace(/^\[|\]$/g, '')) ? 'IP' : 'DNS') + ':' + n.replace(/^\[|\]$/g, ''));
  try {
    await run('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key], { signal });
    await fsp.chmod(key, 0o600);
    await run(
      'openssl',
      ['req', '-new', '-key', key, '-out', csr, '-subj', `/O=ferry-domain-${domain.id}/OU=ferry-console/CN=console`],
      { signal },
    );
    await fsp.writeFile(
      ext,
      [
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,digitalSignature,keyAgreement',
        'extendedKeyUsage=serverAuth',
        `subjectAltName=${[...new Set(sans)].join(',')}`,
      ].join('\n') + '\n',
    );
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
        String(DAYS),
        '-sha256',
        '-extfile',
        ext,
      ],
      { signal },
    );
    // Key first: a reader that sees the new certificate also finds its key.
    await fsp.rename(key, path.join(dir, 'console.key'));
    await fsp.rename(cert, path.join(dir, 'console.crt'));
  } catch (err) {
    throw fail(`Cannot issue the console's certificate from the domain's CA: ${(err as Error).message}`, err);
  } finally {
    for (const f of [key, cert, csr, ext]) await fsp.rm(f, { force: true });
  }
}
