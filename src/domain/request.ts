// The host's side of enrolment: its key is made here, in its own TLS folder, and never
// leaves it; what leaves is a certificate request (public). The signed certificate comes
// back and is installed only after it is checked against the key and the domain's CA.
import crypto, { type KeyObject } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as z from 'zod';
import { FerryError, InvalidInputError } from '../errors.js';
import { NAME_RE } from '../api/common.js';
import { run } from '../util/exec.js';
import { addressProblem, caFingerprint, checkHostCertificate, pemBlocks } from './x509.js';

/** File names inside a host's TLS folder (the agent reads the same names). */
export const TLS_FILES = {
  ca: 'ca.crt',
  cert: 'host.crt',
  key: 'host.key',
  csr: 'host.csr',
  crl: 'ca.crl',
  /** A pending enrolment: the name asked for and the CA it must come from. */
  enrol: 'enrol.json',
} as const;

const EnrolState = z.object({
  name: z.string(),
  address: z.string(),
  port: z.number().int(),
  /** Pinned CA (a join token's fingerprint, or --ca-fingerprint); null: trust on first use. */
  caFingerprint: z.string().nullable(),
  createdAt: z.string(),
});
export type EnrolState = z.infer<typeof EnrolState>;

export async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}

/** Writes a file through a temporary name and a rename, so readers see old or new, never half. */
export async function writeAtomic(file: string, data: string, mode = 0o644): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  try {
    await fsp.writeFile(tmp, data, { mode, flag: 'wx' });
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}

export interface RequestOptions {
  /** Where the key and request go (0700); the key is `keyFile` in it. */
  dir: string;
  name: string;
  /** The address other hosts and the admin reach this host at. */
  address: string;
  port: number;
  /** More addresses for the certificate (a migration network, loopback in a lab). */
  extraIps?: string[];
  /** A join token's proof for the new key, put in the request's challengePassword attribute. */
  challenge?: (publicKey: KeyObject) => string;
  signal?: AbortSignal;
}

export interface MadeRequest {
  keyFile: string;
  csrFile: string;
  csr: string;
}

/**
 * Makes a key (`dir`/host.key, 0600, never printed) and a request (`dir`/host.csr) with CN
 * NAME and subjectAltName: the address(es) and the agent's endpoint as a URI (so the admin
 * learns the port). Refuses if a key is there already; leaves nothing behind on failure.
 */
export async function makeRequest(o: RequestOptions): Promise<MadeRequest> {
  if (!NAME_RE.test(o.name))
    throw new InvalidInputError(
      `Cannot make a request for '${o.name}': names are 1–63 letters, digits, dot, dash or underscore, ` +
        `starting with a letter or digit`,
      { name: o.name },
    );
  for (const a of [o.address, ...(o.extraIps ?? [])]) {
    const p = addressProblem(a);
    if (p) throw new InvalidInputError(`Cannot use address '${a}' for host '${o.name}': ${p}`, { address: a });
  }
  if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535)
    throw new InvalidInputError(`Cannot use port ${o.port}: give 1 to 65535 (the agent's default is 7443)`);
  await fsp.mkdir(o.dir, { recursive: true, mode: 0o700 });
  await fsp.chmod(o.dir, 0o700);
  const keyFile = path.join(o.dir, TLS_FILES.key);
  const csrFile = path.join(o.dir, TLS_FILES.csr);
  if (await exists(keyFile))
    throw new FerryError(
      'E_HOST_INITIALISED',
      `Cannot make a new key for '${o.name}': ${keyFile} exists (this host was initialised already); ` +
        `the agent renews its own certificate ('ferry domain renew'), and to start over remove ${o.dir}`,
      { context: { keyFile } },
    );
  const tag = `${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  const tmpKey = `${keyFile}.tmp-${tag}`;
  const cnf = path.join(o.dir, `req.cnf.tmp-${tag}`);
  const host = o.address.includes(':') ? `[${o.address}]` : o.address;
  const isIpAddr = (a: string): boolean => /^[0-9.]+$/.test(a) || a.includes(':');
  const sans = [
    ...new Set([o.address, ...(o.extraIps ?? [])].map((a) => (isIpAddr(a) ? `IP:${a}` : `DNS:${a}`))),
    `URI:https://${host}:${o.port}`,
  ];
  // The key is made in memory and written once, with mode 0600 from the start.
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const challenge = o.challenge?.(publicKey);
  const lines = [
    '[req]',
    'prompt = no',
    'distinguished_name = dn',
    'req_extensions = ext',
    ...(challenge ? ['attributes = attrs'] : []),
    '[dn]',
    `CN = ${o.name}`,
    ...(challenge ? ['[attrs]', `challengePassword = ${challenge}`] : []),
    '[ext]',
    `subjectAltName = ${sans.join(',')}`,
  ];
  try {
    await fsp.writeFile(tmpKey, privateKey.export({ type: 'sec1', format: 'pem' }), { mode: 0o600, flag: 'wx' });
    await fsp.writeFile(cnf, lines.join('\n') + '\n', { mode: 0o600, flag: 'wx' });
    const r = await run('openssl', ['req', '-new', '-key', tmpKey, '-config', cnf], {
      signal: o.signal,
      timeoutMs: 20_000,
    });
    const csr = pemBlocks(r.stdout, 'CERTIFICATE REQUEST')[0];
    if (!csr) throw new FerryError('E_REQUEST', `Cannot make a certificate request: openssl printed none`);
    await writeAtomic(csrFile, csr);
    await fsp.rename(tmpKey, keyFile);
    return { keyFile, csrFile, csr };
  } catch (err) {
    await fsp.rm(csrFile, { force: true });
    throw err;
  } finally {
    await fsp.rm(tmpKey, { force: true });
    await fsp.rm(cnf, { force: true });
  }
}

export async function readEnrolState(tlsDir: string): Promise<EnrolState | null> {
  const f = path.join(tlsDir, TLS_FILES.enrol);
  let text: string;
  try {
    text = await fsp.readFile(f, 'utf8');
  } catch {
    return null;
  }
  const r = EnrolState.safeParse(JSON.parse(text));
  if (!r.success)
    throw new FerryError(
      'E_ENROL_STATE',
      `Cannot read ${f}: it is not a Ferry enrolment file; remove it and run 'ferry host init' again`,
      {},
    );
  return r.data;
}

export async function writeEnrolState(tlsDir: string, s: EnrolState): Promise<void> {
  await writeAtomic(path.join(tlsDir, TLS_FILES.enrol), JSON.stringify(s, null, 2) + '\n', 0o600);
}

export interface InstallResult {
  name: string;
  serial: string;
  notAfter: string;
  caFingerprint: string;
  /** The CA was not pinned before: the admin should compare this fingerprint. */
  firstUse: boolean;
}

/**
 * Installs a signed certificate (`ferry domain sign`'s output: host certificate then CA)
 * into a host's TLS folder, after checking it against the key there, the name this host
 * asked for, and the CA it trusts (installed ca.crt, else the pinned fingerprint, else the
 * bundle's CA on first use). Writes ca.crt and host.crt only when every check passed.
 */
export async function installCertificate(tlsDir: string, bundle: string): Promise<InstallResult> {
  const certs = pemBlocks(bundle, 'CERTIFICATE');
  if (!certs.length)
    throw new InvalidInputError(
      'Cannot install the certificate: the file holds no PEM certificate; ' +
        "give the file 'ferry domain sign --out' wrote",
    );
  const keyFile = path.join(tlsDir, TLS_FILES.key);
  const keyPem = await fsp.readFile(keyFile, 'utf8').catch(() => {
    throw new FerryError(
      'E_HOST_NOT_INITIALISED',
      `Cannot install the certificate: ${keyFile} is missing; ` +
        `run 'ferry host init NAME --address ADDR' on this host first`,
      {},
    );
  });
  const state = await readEnrolState(tlsDir);
  const caFile = path.join(tlsDir, TLS_FILES.ca);
  const installedCa = await fsp.readFile(caFile, 'utf8').catch(() => null);
  const bundledCa = certs.slice(1).find((c) => new crypto.X509Certificate(c).ca) ?? null;
  const caPem = installedCa ?? bundledCa;
  if (!caPem)
    throw new InvalidInputError(
      'Cannot install the certificate: the file holds no CA certificate and this host has none; ' +
        "give the whole file 'ferry domain sign --out' wrote",
    );
  const fp = caFingerprint(caPem);
  if (state?.caFingerprint && state.caFingerprint !== fp)
    throw new InvalidInputError(
      `Cannot install the certificate: it comes with a CA (fingerprint ${fp}) ` +
        `from another domain than the one this host joins (pinned ${state.caFingerprint}); ` +
        `have the request signed on the admin machine of that domain`,
    );
  if (installedCa && bundledCa && caFingerprint(bundledCa) !== fp)
    throw new InvalidInputError(
      `Cannot install the certificate: ` +
        `it comes from another domain (CA fingerprint ${caFingerprint(bundledCa)}), not this host's (${fp}); ` +
        `have the request signed on the admin machine of this host's domain`,
    );
  const name = state?.name ?? null;
  const [leafPem] = certs;
  if (!leafPem) throw new InvalidInputError('Cannot install the certificate: the file holds no PEM certificate');
  const subjectCn = /CN=([^\n]+)/.exec(new crypto.X509Certificate(leafPem).subject)?.[1] ?? '';
  const cert = checkHostCertificate(leafPem, { name: name ?? subjectCn, keyPem, caPem });
  if (!installedCa) await writeAtomic(caFile, caPem);
  await writeAtomic(path.join(tlsDir, TLS_FILES.cert), leafPem);
  await fsp.rm(path.join(tlsDir, TLS_FILES.csr), { force: true });
  await fsp.rm(path.join(tlsDir, TLS_FILES.enrol), { force: true });
  return {
    name: name ?? subjectCn,
    serial: cert.serialNumber,
    notAfter: new Date(cert.validTo).toISOString(),
    caFingerprint: fp,
    firstUse: !installedCa && !state?.caFingerprint,
  };
}
