// TLS for migration streams with the domain's host certificates: QEMU's tls-creds-x509
// reads fixed file names from a folder, so the agent lays its certificate out that way.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { QmpClient } from '../qemu/qmp.js';
import { run } from '../util/exec.js';

export async function qemuTlsDir(
  tls: { ca: string; cert: string; key: string; crl?: string },
  dataDir: string,
): Promise<string> {
  const dir = path.join(dataDir, 'tls', 'qemu');
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const files: Array<[string, string]> = [
    [tls.ca, 'ca-cert.pem'],
    [tls.cert, 'server-cert.pem'],
    [tls.key, 'server-key.pem'],
    [tls.cert, 'client-cert.pem'],
    [tls.key, 'client-key.pem'],
  ];
  for (const [from, to] of files) {
    await fsp.copyFile(from, path.join(dir, to));
    if (to.endsWith('key.pem')) await fsp.chmod(path.join(dir, to), 0o600);
  }
  // The domain's revocation list, when the admin pushed one: GnuTLS refuses a revoked peer.
  const crl = path.join(dir, 'ca-crl.pem');
  const copied = tls.crl
    ? await fsp.copyFile(tls.crl, crl).then(
        () => true,
        () => false,
      )
    : false;
  if (!copied) await fsp.rm(crl, { force: true });
  // Without DH parameters QEMU's TLS server computes them at every migration (up to 0.5 s):
  // use the standard RFC 7919 group.
  const dh = path.join(dir, 'dh-params.pem');
  if (
    !(await fsp.access(dh).then(
      () => true,
      () => false,
    ))
  ) {
    await run('openssl', ['genpkey', '-genparam', '-algorithm', 'DH', '-pkeyopt', 'group:ffdhe2048', '-out', dh], {
      timeoutMs: 30_000,
    });
  }
  return dir;
}

/** Adds a tls-creds-x509 object (server on the destination, client on the source). */
export async function addTlsCreds(
  qmp: QmpClient,
  id: string,
  endpoint: 'server' | 'client',
  dir: string,
  signal?: AbortSignal,
): Promise<void> {
  await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id, endpoint, dir, 'verify-peer': true }, { signal });
}
