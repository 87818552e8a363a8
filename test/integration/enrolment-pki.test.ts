// The domain's PKI with the real openssl: requests made on the "host" side, signed on the
// "admin" side, installed after checks; every refusal leaves the domain's files and the
// host's folder exactly as they were; join tokens are single-use; revocation lists.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { tempDir } from '../helpers.js';
import { initDomain, type DomainInfo } from '../../src/domain/ca.js';
import { installCertificate, makeRequest } from '../../src/domain/request.js';
import { createToken, currentCrl, revokeHost, signHostRequest } from '../../src/domain/signer.js';
import { initHost, joinHost } from '../../src/domain/host-init.js';
import { addressProblem, caFingerprint, normSerial, readCrl, readCsr } from '../../src/domain/x509.js';
import { challengeFor, decodeToken, encodeToken, parseTtl, tokenProof } from '../../src/domain/token.js';
import { renewAt } from '../../src/agent/tls.js';
import { readInventory } from '../../src/domain/store.js';
import { run } from '../../src/util/exec.js';

/** Every file under `dir` with its SHA-256: "nothing changed" is this map being equal. */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else
        out.set(
          p,
          crypto
            .createHash('sha256')
            .update(await fsp.readFile(p))
            .digest('hex'),
        );
    }
  };
  await walk(dir);
  return out;
}

async function enrol(
  domain: DomainInfo,
  dir: string,
  name: string,
  address = '10.0.0.5',
): Promise<{ tls: string; serial: string }> {
  const tls = path.join(dir, name, 'tls');
  const r = await makeRequest({ dir: tls, name, address, port: 7443 });
  const s = await signHostRequest(domain, r.csr);
  const i = await installCertificate(tls, s.bundle);
  return { tls, serial: normSerial(i.serial) };
}

test('addresses, tokens and the renewal point', () => {
  assert.equal(addressProblem('10.1.2.3'), null);
  assert.equal(addressProblem('127.0.0.1'), null);
  assert.equal(addressProblem('fd00::5'), null);
  assert.equal(addressProblem('host-a.example.org'), null);
  assert.match(addressProblem('0.0.0.0') ?? '', /any/);
  assert.match(addressProblem('::') ?? '', /any/);
  assert.match(addressProblem('239.1.1.1') ?? '', /multicast/);
  assert.match(addressProblem('not an address') ?? '', /neither/);
  assert.match(addressProblem('300.1.1.1') ?? '', /neither/);
  const t = {
    domainId: 'd',
    id: '0123456789abcdef',
    name: 'h1',
    address: '10.0.0.5',
    port: 7443,
    caFingerprint: 'a'.repeat(64),
    expiresAt: new Date('2030-01-01T00:00:00Z'),
    secret: crypto.randomBytes(32).toString('base64url'),
  };
  assert.deepEqual(decodeToken(encodeToken(t)), t);
  assert.throws(() => decodeToken('ferry-join-1.garbage'), /damaged/);
  assert.throws(() => decodeToken('hello'), /not a Ferry join token/);
  assert.equal(parseTtl('90m'), 90 * 60_000);
  assert.throws(() => parseTtl('8d'), /1s to 7d/);
  assert.throws(() => parseTtl('soon'), /duration/);
  const nb = new Date('2030-01-01T00:00:00Z');
  assert.equal(renewAt(nb, new Date('2030-01-31T00:00:00Z')).toISOString(), '2030-01-21T00:00:00.000Z');
});

test('a request signed and installed; the key never leaves the host folder', async (t) => {
  const dir = await tempDir(t);
  const domain = await initDomain(path.join(dir, 'domain'));
  const { tls, serial } = await enrol(domain, dir, 'h1');
  const key = await fsp.readFile(path.join(tls, 'host.key'), 'utf8');
  assert.equal((await fsp.stat(path.join(tls, 'host.key'))).mode & 0o777, 0o600);
  const cert = new crypto.X509Certificate(await fsp.readFile(path.join(tls, 'host.crt')));
  assert.match(cert.subject, /O=ferry-domain-/);
  assert.match(cert.subject, /OU=ferry-host/);
  assert.match(cert.subjectAltName ?? '', /DNS:h1/);
  assert.match(cert.subjectAltName ?? '', /IP Address:10.0.0.5/);
  const days = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / 86_400_000;
  assert.equal(days, 30);
  const inv = await readInventory(domain.dir);
  assert.deepEqual(
    inv.hosts.map((h) => [h.name, h.address, h.port, h.certificates[0]?.serial]),
    [['h1', '10.0.0.5', 7443, serial]],
  );
  // No file of the domain holds the key.
  const body = key.split('\n').slice(1, -2).join('');
  for (const [f] of await snapshot(domain.dir))
    assert.ok(!(await fsp.readFile(f, 'utf8')).includes(body), `${f} holds the host key`);
});

test('refusals change nothing: enrolled name, altered request, another domain, key reuse', async (t) => {
  const dir = await tempDir(t);
  const domain = await initDomain(path.join(dir, 'domain'));
  const { tls } = await enrol(domain, dir, 'h1');
  const before = await snapshot(domain.dir);
  // The same name again.
  const again = await makeRequest({ dir: path.join(dir, 'h1b'), name: 'h1', address: '10.0.0.6', port: 7443 });
  await assert.rejects(signHostRequest(domain, again.csr), /enrolled already.*--renew.*ferry domain revoke h1/);
  // An altered request (the signature no longer verifies).
  const other = await makeRequest({ dir: path.join(dir, 'h2'), name: 'h2', address: '10.0.0.7', port: 7443 });
  const der = Buffer.from(other.csr.split('\n').slice(1, -2).join(''), 'base64');
  der[der.length - 5] = (der[der.length - 5] ?? 0) ^ 1;
  const bad = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  await assert.rejects(signHostRequest(domain, bad), /signature does not verify/);
  // Not a request at all, a bad address, a renewal for another name.
  await assert.rejects(signHostRequest(domain, 'hello'), /CERTIFICATE REQUEST/);
  await assert.rejects(signHostRequest(domain, other.csr, { expectName: 'h1' }), /may only renew its own/);
  assert.deepEqual(await snapshot(domain.dir), before, 'the domain folder is unchanged');
  // Another domain signs h1's key: h1 refuses that certificate, its folder unchanged.
  const foreign = await initDomain(path.join(dir, 'foreign'));
  const h1csr = await readCsr(await fsp.readFile(path.join(dir, 'h1b', 'host.csr'), 'utf8'));
  assert.equal(h1csr.commonName, 'h1');
  const reqAgain = await makeRequest({ dir: path.join(dir, 'h1c'), name: 'h1', address: '10.0.0.5', port: 7443 });
  const signedElsewhere = await signHostRequest(foreign, reqAgain.csr);
  const hostBefore = await snapshot(tls);
  await assert.rejects(installCertificate(tls, signedElsewhere.bundle), /another domain/);
  assert.deepEqual(await snapshot(tls), hostBefore, "the host's folder is unchanged");
  // A key certified for h1 cannot be certified for another name.
  const stolen = path.join(dir, 'h9');
  await fsp.mkdir(stolen, { recursive: true });
  await fsp.copyFile(path.join(tls, 'host.key'), path.join(stolen, 'k'));
  const { stdout } = await run('openssl', [
    'req',
    '-new',
    '-key',
    path.join(stolen, 'k'),
    '-subj',
    '/CN=h9',
    '-addext',
    'subjectAltName=IP:10.0.0.9',
  ]);
  await assert.rejects(signHostRequest(domain, stdout), /certified for host 'h1' already/);
  assert.deepEqual(await snapshot(domain.dir), before, 'the domain folder is still unchanged');
});

test('host init pins the CA: a certificate from another domain is refused', async (t) => {
  const dir = await tempDir(t);
  const domain = await initDomain(path.join(dir, 'domain'));
  const foreign = await initDomain(path.join(dir, 'foreign'));
  const fp = caFingerprint(await fsp.readFile(domain.caCert, 'utf8'));
  const etc = path.join(dir, 'etc');
  const r = await initHost({
    name: 'h3',
    address: '10.0.0.8',
    port: 7443,
    config: path.join(etc, 'agent.json'),
    tlsDir: path.join(etc, 'tls'),
    dataDir: path.join(dir, 'data'),
    caFingerprint: fp,
  });
  const config = JSON.parse(await fsp.readFile(path.join(etc, 'agent.json'), 'utf8')) as Record<string, unknown>;
  assert.deepEqual(config, {
    name: 'h3',
    listen: '10.0.0.8:7443',
    dataDir: path.join(dir, 'data'),
    migrationAddress: '10.0.0.8',
    tlsDir: path.join(etc, 'tls'),
    // scripts/setup (and the package) made the user QEMU runs as: an installed host's default.
    qemu: { user: 'ferry-qemu' },
  });
  const before = await snapshot(path.join(etc, 'tls'));
  await assert.rejects(
    installCertificate(path.join(etc, 'tls'), (await signHostRequest(foreign, r.csr)).bundle),
    /from another domain than the one this host joins/,
  );
  assert.deepEqual(await snapshot(path.join(etc, 'tls')), before);
  // Set up twice: refused, nothing changed.
  const all = await snapshot(dir);
  await assert.rejects(
    initHost({
      name: 'h3',
      address: '10.0.0.8',
      port: 7443,
      config: path.join(etc, 'agent.json'),
      tlsDir: path.join(etc, 'tls'),
      dataDir: path.join(dir, 'data'),
    }),
    /initialised already/,
  );
  assert.deepEqual(await snapshot(dir), all);
  const ok = await installCertificate(path.join(etc, 'tls'), (await signHostRequest(domain, r.csr)).bundle);
  assert.equal(ok.firstUse, false);
  assert.ok(!fs.existsSync(path.join(etc, 'tls', 'host.csr')), 'the request is consumed');
});

test('join tokens: used once, expired, wrong name or wrong secret are refused', async (t) => {
  const dir = await tempDir(t);
  const domain = await initDomain(path.join(dir, 'domain'));
  const host = (n: string): { config: string; tlsDir: string; dataDir: string } => ({
    config: path.join(dir, n, 'agent.json'),
    tlsDir: path.join(dir, n, 'tls'),
    dataDir: path.join(dir, n, 'data'),
  });
  const { token } = await createToken(domain, { name: 'j1', address: '10.0.0.11', ttlMs: 3_600_000 });
  const joined = await joinHost(token, host('j1'));
  const s = await signHostRequest(domain, joined.csr);
  assert.ok(s.tokenId);
  await installCertificate(host('j1').tlsDir, s.bundle);
  // The same token on another machine: the request is made, signing refuses it.
  const before = await snapshot(domain.dir);
  const again = await joinHost(token, host('j1-copy'));
  await assert.rejects(signHostRequest(domain, again.csr), /was used already.*ferry domain token j1/);
  assert.deepEqual(await snapshot(domain.dir), before);
  // Expired: refused on the host before anything is written, and at signing.
  const short = await createToken(domain, { name: 'j2', address: '10.0.0.12', ttlMs: 1500 });
  const early = await joinHost(short.token, host('j2'));
  await new Promise((r) => setTimeout(r, 1700));
  await assert.rejects(joinHost(short.token, host('j2-late')), /expired/);
  assert.ok(!fs.existsSync(path.join(dir, 'j2-late')), 'nothing written for an expired token');
  await assert.rejects(signHostRequest(domain, early.csr), /expired at/);
  // Wrong name: on the host, and a forged request at signing.
  const t3 = await createToken(domain, { name: 'j3', address: '10.0.0.13', ttlMs: 3_600_000 });
  await assert.rejects(joinHost(t3.token, { ...host('j3'), name: 'j4' }), /token is for host 'j3'/);
  const dt = decodeToken(t3.token);
  const forged = await makeRequest({
    dir: path.join(dir, 'forged'),
    name: 'j4',
    address: '10.0.0.13',
    port: 7443,
    challenge: (k) => challengeFor(dt.id, tokenProof(dt.secret, 'j4', k)),
  });
  await assert.rejects(signHostRequest(domain, forged.csr), /is for host 'j3', not 'j4'/);
  const wrongSecret = await makeRequest({
    dir: path.join(dir, 'wrong'),
    name: 'j3',
    address: '10.0.0.13',
    port: 7443,
    challenge: (k) => challengeFor(dt.id, tokenProof(crypto.randomBytes(32).toString('base64url'), 'j3', k)),
  });
  await assert.rejects(signHostRequest(domain, wrongSecret.csr), /wrong secret/);
  // The token is still good for the right request.
  const good = await joinHost(t3.token, host('j3'));
  assert.ok((await signHostRequest(domain, good.csr)).tokenId);
});

test('revocation: the CRL lists the serials, is signed by the CA, and grows', async (t) => {
  const dir = await tempDir(t);
  const domain = await initDomain(path.join(dir, 'domain'));
  const caPem = await fsp.readFile(domain.caCert, 'utf8');
  const first = await readCrl(await currentCrl(domain), caPem);
  assert.equal(first.revoked.length, 0);
  const a = await enrol(domain, dir, 'r1');
  await enrol(domain, dir, 'r2', '10.0.0.6');
  const r = await revokeHost(domain, 'r1');
  assert.deepEqual(r.serials, [a.serial]);
  const crl = await readCrl(r.crl, caPem);
  assert.deepEqual(crl.revoked, [a.serial]);
  assert.ok(crl.number > first.number);
  const foreign = await initDomain(path.join(dir, 'foreign'));
  await assert.rejects(readCrl(r.crl, await fsp.readFile(foreign.caCert, 'utf8')), /not signed by this domain/);
  await assert.rejects(revokeHost(domain, 'nobody'), /no host of that name/);
  // A revoked name may be enrolled anew (a new machine, a new key).
  const fresh = await makeRequest({ dir: path.join(dir, 'r1-new'), name: 'r1', address: '10.0.0.5', port: 7443 });
  assert.ok((await signHostRequest(domain, fresh.csr)).serial);
});
