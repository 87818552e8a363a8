// TLS material for the raw-QMP path: a throw-away CA and one certificate (server and client
// use) laid out the way QEMU's tls-creds-x509 reads a folder, with the same DH group as
// Ferry's agent. The raw path then runs with the same GnuTLS priority as Ferry's streams, so
// "Ferry (TLS) ÷ raw (TLS)" compares like with like.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { run } from '../../src/util/exec.js';

/** The name the certificate carries; the source checks it with `tls-hostname`. */
export const RAW_TLS_HOSTNAME = 'raw-bench';

export async function makeRawTlsDir(dir: string): Promise<string> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const f = (n: string): string => path.join(dir, n);
  const o = { timeoutMs: 30_000 };
  await run(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-days',
      '2',
      '-subj',
      '/CN=raw-bench CA',
      '-keyout',
      f('ca-key.pem'),
      '-out',
      f('ca-cert.pem'),
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    o,
  );
  await run(
    'openssl',
    [
      'req',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      `/CN=${RAW_TLS_HOSTNAME}`,
      '-keyout',
      f('server-key.pem'),
      '-out',
      f('leaf.csr'),
    ],
    o,
  );
  await fsp.writeFile(
    f('leaf.ext'),
    'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' +
      `extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:${RAW_TLS_HOSTNAME}\n`,
  );
  await run(
    'openssl',
    [
      'x509',
      '-req',
      '-in',
      f('leaf.csr'),
      '-CA',
      f('ca-cert.pem'),
      '-CAkey',
      f('ca-key.pem'),
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      f('leaf.ext'),
      '-out',
      f('server-cert.pem'),
    ],
    o,
  );
  await fsp.copyFile(f('server-cert.pem'), f('client-cert.pem'));
  await fsp.copyFile(f('server-key.pem'), f('client-key.pem'));
  await run(
    'openssl',
    ['genpkey', '-genparam', '-algorithm', 'DH', '-pkeyopt', 'group:ffdhe2048', '-out', f('dh-params.pem')],
    o,
  );
  for (const n of ['ca-key.pem', 'leaf.csr', 'leaf.ext', 'ca-cert.srl']) await fsp.rm(f(n), { force: true });
  return dir;
}
