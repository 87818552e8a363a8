// The folder of TLS files QEMU reads (migration/tls.ts): laid out once, and again only when a
// source file, the folder or one of its files changed (a renewed certificate, a CRL pushed, a
// file damaged or removed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { qemuTlsDir } from '../../src/migration/tls.js';
import { tempDir } from '../helpers.js';

/** Stand-ins for a certificate and its key: the layout copies bytes, it does not parse them. */
async function newCert(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const cert = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  await fsp.writeFile(cert, `-----BEGIN CERTIFICATE-----\n${name} ${randomUUID()}\n-----END CERTIFICATE-----\n`);
  await fsp.writeFile(key, `-----BEGIN PRIVATE KEY-----\n${name} ${randomUUID()}\n-----END PRIVATE KEY-----\n`);
  return { cert, key };
}

test('the layout follows its sources: a renewed certificate, a CRL, a file removed', async (t) => {
  const dir = await tempDir(t, 'ferry-tls-layout-');
  const ca = await newCert(dir, 'ca');
  const host = await newCert(dir, 'host');
  const tls = { ca: ca.cert, cert: host.cert, key: host.key };
  const data = path.join(dir, 'data');
  const out = await qemuTlsDir(tls, data);
  const read = (f: string): Promise<string> => fsp.readFile(path.join(out, f), 'utf8');
  assert.equal(await read('server-cert.pem'), await fsp.readFile(host.cert, 'utf8'));
  assert.equal(await read('client-key.pem'), await fsp.readFile(host.key, 'utf8'));
  assert.match(await read('dh-params.pem'), /DH PARAMETERS/);

  // Unchanged sources: the same folder, its files untouched.
  const before = (await fsp.stat(path.join(out, 'server-cert.pem'))).ino;
  assert.equal(await qemuTlsDir(tls, data), out);
  assert.equal((await fsp.stat(path.join(out, 'server-cert.pem'))).ino, before);

  // A renewal replaces the host's files (written anew, renamed in): the layout follows.
  const renewed = await newCert(dir, 'renewed');
  await fsp.rename(renewed.cert, host.cert);
  await fsp.rename(renewed.key, host.key);
  await qemuTlsDir(tls, data);
  assert.equal(await read('server-cert.pem'), await fsp.readFile(host.cert, 'utf8'));
  assert.equal(await read('server-key.pem'), await fsp.readFile(host.key, 'utf8'));

  // A CRL pushed, then gone.
  const crl = path.join(dir, 'domain.crl');
  await fsp.writeFile(crl, '-----BEGIN X509 CRL-----\nstand-in\n-----END X509 CRL-----\n');
  await qemuTlsDir({ ...tls, crl }, data);
  assert.equal(await read('ca-crl.pem'), await fsp.readFile(crl, 'utf8'));
  await qemuTlsDir(tls, data);
  await assert.rejects(fsp.access(path.join(out, 'ca-crl.pem')));

  // A file of the layout rewritten in place (the folder's mtime unchanged): laid out again.
  await fsp.writeFile(path.join(out, 'client-key.pem'), 'damaged');
  await qemuTlsDir(tls, data);
  assert.equal(await read('client-key.pem'), await fsp.readFile(host.key, 'utf8'));

  // A file of the layout removed: made again.
  await fsp.rm(path.join(out, 'ca-cert.pem'));
  await qemuTlsDir(tls, data);
  assert.equal(await read('ca-cert.pem'), await fsp.readFile(ca.cert, 'utf8'));
});
