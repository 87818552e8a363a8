// util/plain-text.ts: what another host answers is printed on the administrator's terminal, so
// the client parses every answer with each control character but tab and newline made U+FFFD.
// Checked on the function, then end to end: an AgentClient against an HTTPS server that puts
// escape sequences in a success body and in an error's message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { AgentClient } from '../../src/api/client.js';
import { FerryError } from '../../src/errors.js';
import { parsePlain, plainText } from '../../src/util/plain-text.js';

const ESC = '\u001b';

test('plainText replaces C0 (but tab and newline), DEL and C1 controls, and leaves the rest', () => {
  assert.equal(plainText('vm web1: 3 MiB/s → host-b, ünïcode'), 'vm web1: 3 MiB/s → host-b, ünïcode');
  assert.equal(plainText('a\tb\nc'), 'a\tb\nc');
  assert.equal(plainText(`${ESC}]0;owned\u0007x`), '\ufffd]0;owned\ufffdx');
  assert.equal(plainText('ok\rFAILED'), 'ok\ufffdFAILED');
  assert.equal(plainText('\u009b2J\u007f'), '\ufffd2J\ufffd');
  assert.deepEqual(parsePlain(JSON.stringify({ [`k${ESC}`]: [`v${ESC}[31m`, 1, null, { x: ESC }] })), {
    'k\ufffd': ['v\ufffd[31m', 1, null, { x: '\ufffd' }],
  });
  // Each way JSON carries a control character: an escape (any case), `\r`, a raw DEL or C1.
  for (const bad of ['a\rb', 'a\u001Bb', 'a\u007fb', 'a\u009bb', 'a\bb'])
    assert.deepEqual(parsePlain(JSON.stringify({ m: bad }).replace('u001b', 'u001B')), { m: plainText(bad) });
  assert.deepEqual(parsePlain('{"m":"a\\u001B"}'), { m: 'a\ufffd' });
  // Clean text (an escaped backslash, a tab, a newline) comes back as JSON.parse gives it.
  const clean = JSON.stringify({ p: 'C:\\raw\\bin', t: 'a\tb\nc', u: 'ünï → ok' });
  assert.deepEqual(parsePlain(clean), JSON.parse(clean));
});

function pki(dir: string): void {
  const o = (args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  const key = (name: string): void => o(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`]);
  key('ca');
  o(['req', '-x509', '-new', '-key', 'ca.key', '-subj', '/CN=test CA', '-days', '2', '-out', 'ca.crt']);
  for (const name of ['host-x', 'admin']) {
    key(name);
    o(['req', '-new', '-key', `${name}.key`, '-subj', `/CN=${name}`, '-out', `${name}.csr`]);
    o(
      [
        'x509',
        '-req',
        '-in',
        `${name}.csr`,
        '-CA',
        'ca.crt',
        '-CAkey',
        'ca.key',
        '-CAcreateserial',
        '-days',
        '2',
      ].concat(['-out', `${name}.crt`]),
    );
  }
}

test("an agent's answers and error messages reach the caller without terminal escapes", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-plain-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  pki(dir);
  const f = (n: string): Buffer => fs.readFileSync(path.join(dir, n));
  const server = https.createServer({ key: f('host-x.key'), cert: f('host-x.crt') }, (req, res) => {
    res.setHeader('content-type', 'application/json');
    if (req.url === '/ok')
      res.end(JSON.stringify({ name: `web1${ESC}[2J`, events: [{ message: `done${ESC}]0;x\u0007` }] }));
    else {
      res.statusCode = 409;
      res.end(
        JSON.stringify({ error: { code: 'E_HOST_BUSY', message: `Cannot move${ESC}[1A${ESC}[2K: all is well` } }),
      );
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const client = new AgentClient({
    endpoint: `https://127.0.0.1:${port}`,
    host: 'host-x',
    credentials: {
      ca: path.join(dir, 'ca.crt'),
      cert: path.join(dir, 'admin.crt'),
      key: path.join(dir, 'admin.key'),
    },
  });
  t.after(() => client.close());
  assert.deepEqual(await client.request('GET', '/ok', undefined, { timeoutMs: 10_000 }), {
    name: 'web1\ufffd[2J',
    events: [{ message: 'done\ufffd]0;x\ufffd' }],
  });
  await assert.rejects(client.request('GET', '/err', undefined, { timeoutMs: 10_000 }), (err: unknown) => {
    assert.ok(err instanceof FerryError);
    assert.equal(err.code, 'E_HOST_BUSY');
    assert.equal(err.message, 'Cannot move\ufffd[1A\ufffd[2K: all is well');
    return true;
  });
});
