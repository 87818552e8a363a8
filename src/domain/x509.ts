// Reading certificates, certificate requests and revocation lists. Node parses
// certificates itself; requests and CRLs go through the openssl CLI (a dependency of every
// host already), whose text output is parsed here and nowhere else.
import crypto, { X509Certificate, type KeyObject } from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { isIP } from 'node:net';
import { InvalidInputError } from '../errors.js';
import { run } from '../util/exec.js';

/** Every PEM block with this label (e.g. CERTIFICATE), each with its own BEGIN/END lines. */
export function pemBlocks(text: string, label: string): string[] {
  const re = new RegExp(`-----BEGIN ${label}-----[\\s\\S]*?-----END ${label}-----`, 'g');
  return (text.match(re) ?? []).map((b) => b + '\n');
}

/** SHA-256 of a public key's DER SubjectPublicKeyInfo, hex: the key's identity in the inventory. */
export function spkiSha256(key: KeyObject): string {
  return crypto
    .createHash('sha256')
    .update(key.export({ type: 'spki', format: 'der' }))
    .digest('hex');
}

/** The CA fingerprint people compare and tokens pin: SHA-256 of the certificate, hex without colons. */
export function caFingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256.replace(/:/g, '').toLowerCase();
}

/** Serials compared as openssl and Node print them: upper-case hex without leading zeros. */
export function normSerial(s: string): string {
  return s
    .replace(/^0x/i, '')
    .toUpperCase()
    .replace(/^0+(?=.)/, '');
}

export function subjectOf(cert: X509Certificate): { O?: string; OU?: string; CN?: string } {
  const out: Record<string, string> = {};
  for (const line of cert.subject.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

/** IP and DNS names of a certificate's subjectAltName. */
export function certAltNames(cert: X509Certificate): { ips: string[]; dns: string[] } {
  const ips: string[] = [];
  const dns: string[] = [];
  for (const part of (cert.subjectAltName ?? '').split(/,\s*/)) {
    if (part.startsWith('IP Address:')) ips.push(part.slice('IP Address:'.length));
    else if (part.startsWith('DNS:')) dns.push(part.slice(4));
  }
  return { ips, dns };
}

const DNS_RE =
  /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/**
 * Why an address cannot be a host's (null when it can): an IP literal or a DNS name, not the
 * "any" address, not broadcast or multicast (loopback is fine: labs use it).
 */
export function addressProblem(a: string): string | null {
  const v = isIP(a);
  if (v === 4) {
    const first = Number(a.split('.')[0]);
    if (a === '0.0.0.0') return 'it is the "any" address; give the address other hosts reach this one at';
    if (a === '255.255.255.255') return 'it is the broadcast address';
    if (first >= 224 && first <= 239) return 'it is a multicast address';
    return null;
  }
  if (v === 6) {
    const l = a.toLowerCase();
    if (l === '::' || l === '0:0:0:0:0:0:0:0')
      return 'it is the "any" address; give the address other hosts reach this one at';
    if (l.startsWith('ff')) return 'it is a multicast address';
    return null;
  }
  if (DNS_RE.test(a) && !/^[0-9.]+$/.test(a)) return null;
  return 'it is neither an IP address nor a DNS name';
}

export interface CsrInfo {
  /** The CN the host asked for (the signer sets the rest of the subject itself). */
  commonName: string | null;
  ips: string[];
  dns: string[];
  uris: string[];
  /** The challengePassword attribute: a join token's proof when present. */
  challenge: string | null;
  publicKey: KeyObject;
  /** EC curve name ('prime256v1'), or the key type for other keys. */
  keyKind: string;
}

async function withTemp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-x509-'));
  try {
    return await fn(dir);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

const MAX_PEM = 16 * 1024;

/** Parses a PEM certificate request and checks its self-signature (the requester holds the key). */
export async function readCsr(pem: string, opts: { signal?: AbortSignal } = {}): Promise<CsrInfo> {
  const blocks = pemBlocks(pem, 'CERTIFICATE REQUEST');
  const [block] = blocks;
  if (!block || blocks.length !== 1 || pem.length > MAX_PEM)
    throw new InvalidInputError(
      'Cannot read the certificate request: ' +
        "expected one PEM block 'CERTIFICATE REQUEST' (what 'ferry host init' prints)",
    );
  const r = await run('openssl', ['req', '-noout', '-verify', '-text', '-pubkey', '-nameopt', 'RFC2253'], {
    input: block,
    signal: opts.signal,
    timeoutMs: 10_000,
  }).catch((err: unknown) => {
    throw new InvalidInputError(
      'Cannot read the certificate request: openssl cannot parse it; send the file as printed',
      {},
      err,
    );
  });
  // openssl 3.0 exits 0 on a bad self-signature: the verdict is only on stderr.
  if (!/self-signature verify OK/.test(r.stderr) || /verify failure/.test(r.stderr))
    throw new InvalidInputError(
      'Cannot accept the certificate request: its signature does not verify (altered, ' +
        'or not made with the key it names); make a new one on the host',
    );
  const text = r.stdout;
  const cn = /^\s*Subject:.*?\bCN\s*=\s*([^,\n]+)/m.exec(text)?.[1]?.trim() ?? null;
  const sanLine = /X509v3 Subject Alternative Name:\s*\n\s*(.+)/.exec(text)?.[1] ?? '';
  const ips: string[] = [];
  const dns: string[] = [];
  const uris: string[] = [];
  for (const part of sanLine.split(/,\s*/)) {
    if (part.startsWith('IP Address:')) ips.push(part.slice('IP Address:'.length));
    else if (part.startsWith('DNS:')) dns.push(part.slice(4));
    else if (part.startsWith('URI:')) uris.push(part.slice(4));
  }
  const challenge = /challengePassword\s*:(\S+)/.exec(text)?.[1] ?? null;
  const keyPem = pemBlocks(text, 'PUBLIC KEY')[0];
  if (!keyPem) throw new InvalidInputError('Cannot read the certificate request: it names no public key');
  const publicKey = crypto.createPublicKey(keyPem);
  const keyKind =
    publicKey.asymmetricKeyType === 'ec'
      ? (publicKey.asymmetricKeyDetails?.namedCurve ?? 'ec')
      : (publicKey.asymmetricKeyType ?? 'unknown');
  return { commonName: cn, ips, dns, uris, challenge, publicKey, keyKind };
}

export interface CrlInfo {
  number: bigint;
  lastUpdate: Date;
  nextUpdate: Date | null;
  /** Revoked serials, normalised (normSerial). */
  revoked: string[];
}

/** Parses a CRL and checks it is signed by `caPem`; throws InvalidInputError otherwise. */
export async function readCrl(pem: string, caPem: string, opts: { signal?: AbortSignal } = {}): Promise<CrlInfo> {
  const blocks = pemBlocks(pem, 'X509 CRL');
  const [block] = blocks;
  if (!block || blocks.length !== 1 || pem.length > 4 * 1024 * 1024)
    throw new InvalidInputError("Cannot read the revocation list: expected one PEM block 'X509 CRL'");
  return withTemp(async (dir) => {
    const ca = path.join(dir, 'ca.crt');
    await fsp.writeFile(ca, caPem);
    const r = await run(
      'openssl',
      ['crl', '-noout', '-CAfile', ca, '-crlnumber', '-lastupdate', '-nextupdate', '-text'],
      { input: block, signal: opts.signal, timeoutMs: 10_000 },
    ).catch((err: unknown) => {
      throw new InvalidInputError(
        "Cannot accept the revocation list: it is not signed by this domain's CA; push the CRL of this host's domain",
        {},
        err,
      );
    });
    if (!/verify OK/.test(r.stderr))
      throw new InvalidInputError(
        "Cannot accept the revocation list: it is not signed by this domain's CA; push the CRL of this host's domain",
      );
    const t = r.stdout;
    const num = /crlNumber=(0x[0-9A-Fa-f]+|\d+)/.exec(t)?.[1];
    const last = /lastUpdate=(.+)/.exec(t)?.[1];
    const next = /nextUpdate=(.+)/.exec(t)?.[1];
    if (!num || !last)
      throw new InvalidInputError(
        'Cannot accept the revocation list: it has no CRL number; generate it with ferry domain revoke',
      );
    const revoked = [...t.matchAll(/Serial Number:\s*([0-9A-Fa-f]+)/g)].map((m) => normSerial(m[1] ?? ''));
    return {
      number: BigInt(num),
      lastUpdate: new Date(last.trim()),
      nextUpdate: next && !/NONE/.test(next) ? new Date(next.trim()) : null,
      revoked,
    };
  });
}

export interface HostCertCheck {
  /** The host name the certificate must carry. */
  name: string;
  /** The private key (PEM) the certificate must match. */
  keyPem: string;
  /** The domain's CA certificate. */
  caPem: string;
  now?: Date;
}

/**
 * Checks a host certificate before it is installed: issued and signed by the CA, for this
 * name in this domain with the host role, for this key, and valid now. Returns the parsed
 * certificate; throws a message naming the fix otherwise.
 */
export function checkHostCertificate(certPem: string, c: HostCertCheck): X509Certificate {
  let cert: X509Certificate;
  let ca: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
    ca = new X509Certificate(c.caPem);
  } catch (err) {
    throw new InvalidInputError('Cannot install the certificate: it is not a PEM certificate', {}, err);
  }
  const caId = /O=ferry-domain-([0-9a-f-]+)/.exec(ca.subject)?.[1];
  const s = subjectOf(cert);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) {
    const other = /^ferry-domain-(.+)$/.exec(s.O ?? '')?.[1];
    const from = other ? `another domain (${other})` : 'another CA';
    throw new InvalidInputError(
      `Cannot install the certificate: it is from ${from}, not this host's domain ` +
        `(${caId ?? 'unknown'}, CA fingerprint ${caFingerprint(c.caPem)}); ` +
        "have the request signed on the admin machine of this domain ('ferry domain sign')",
      { domain: other },
    );
  }
  if (s.O !== `ferry-domain-${caId}` || s.OU !== 'ferry-host' || s.CN !== c.name)
    throw new InvalidInputError(
      `Cannot install the certificate: it is for '${s.CN}' (${s.OU}), not the host '${c.name}'; ` +
        `sign this host's own request`,
    );
  const key = crypto.createPrivateKey(c.keyPem);
  if (spkiSha256(cert.publicKey) !== spkiSha256(crypto.createPublicKey(key)))
    throw new InvalidInputError(
      `Cannot install the certificate for '${c.name}': it was signed for another key, ` +
        `not this host's (an older request?); sign the request this host printed last`,
    );
  const now = c.now ?? new Date();
  if (new Date(cert.validTo) <= now || new Date(cert.validFrom) > new Date(now.getTime() + 5 * 60_000))
    throw new InvalidInputError(
      `Cannot install the certificate for '${c.name}': it is valid from ${cert.validFrom} to ${cert.validTo}, ` +
        `not now; check both clocks and sign again`,
    );
  return cert;
}
