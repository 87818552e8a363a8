// util/root-store.ts: under --use-openssl-ca (as Ferry's launchers start Node) the default root
// store is made empty, the environment is left as it was, and a context given its own CA still
// verifies its peer: a server of that CA passes, one of another CA fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '..', '..');

function ca(dir: string, name: string): void {
  const o = (args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  o(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}-ca.key`]);
  o([
    'req',
    '-x509',
    '-new',
    '-key',
    `${name}-ca.key`,
    '-subj',
    `/CN=${name} CA`,
    '-days',
    '2',
    '-out',
    `${name}-ca.crt`,
  ]);
  o(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`]);
  o(['req', '-new', '-key', `${name}.key`, '-subj', '/CN=localhost', '-out', `${name}.csr`]);
  fs.writeFileSync(path.join(dir, 'ext'), 'subjectAltName=DNS:localhost\n');
  o(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${name}-ca.crt`,
      '-CAkey',
      `${name}-ca.key`,
      '-CAcreateserial',
    ].concat(['-days', '2', '-extfile', 'ext', '-out', `${name}.crt`]),
  );
}

// Runs in a child Node: the store is per process, and made once.
const CHILD = `
import tls from 'node:tls';
import fs from 'node:fs';
import { emptyDefaultRootStore } from ${JSON.stringify(path.join(ROOT, 'src', 'util', 'root-store.ts'))};
const dir = process.argv[1];
const read = (f) => fs.readFileSync(dir + '/' + f);
emptyDefaultRootStore();
const out = { certFile: process.env.SSL_CERT_FILE ?? null };
const serve = (name) => new Promise((resolve) => {
  const s = tls.createServer({ key: read(name + '.key'), cert: read(name + '.crt') }, (c) => c.end());
  s.listen(0, '127.0.0.1', () => resolve(s));
});
const connect = (port) => new Promise((resolve) => {
  const c = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ca: read('good-ca.crt') });
  c.once('secureConnect', () => { resolve('ok'); c.destroy(); });
  c.once('error', (e) => resolve(e.code ?? e.message));
});
for (const name of ['good', 'other']) {
  const s = await serve(name);
  out[name] = await connect(s.address().port);
  s.close();
}
process.stdout.write(JSON.stringify(out));
`;

test('the default root store is emptied, the environment kept, and a domain CA still decides', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-rootstore-'));
  try {
    ca(dir, 'good');
    ca(dir, 'other');
    const tsx = path.join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs');
    for (const flag of [['--use-openssl-ca'], []]) {
      const r = spawnSync(
        process.execPath,
        [...flag, '--import', `file://${tsx}`, '--input-type=module', '-e', CHILD, dir],
        { encoding: 'utf8', env: { ...process.env, SSL_CERT_FILE: '/nonexistent/kept.pem' }, timeout: 60_000 },
      );
      assert.equal(r.status, 0, r.stderr);
      const out = JSON.parse(r.stdout) as Record<string, string | null>;
      assert.equal(out.certFile, '/nonexistent/kept.pem', `SSL_CERT_FILE restored (${flag.join(' ') || 'no flag'})`);
      assert.equal(out.good, 'ok', 'a server of the given CA is trusted');
      assert.notEqual(out.other, 'ok', 'a server of another CA is refused');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
