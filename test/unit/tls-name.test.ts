// The TLS server name a client sends: DNS names only, never an IP address (RFC 6066; Node's DEP0123).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { tlsServerName } from '../../src/util/tls-name.js';

test('a DNS name is the server name; an IPv4 or IPv6 address gives none', () => {
  assert.equal(tlsServerName('host-a.example.org'), 'host-a.example.org');
  assert.equal(tlsServerName('localhost'), 'localhost');
  assert.equal(tlsServerName('127.0.0.1'), '');
  assert.equal(tlsServerName('10.1.2.3'), '');
  assert.equal(tlsServerName('::1'), '');
  assert.equal(tlsServerName('[fd00::5]'), '', "a URL's bracketed IPv6 host");
});

test('connecting to an IP address with the chosen server name prints no deprecation warning', async () => {
  // A server that hangs up: the warning, when there is one, comes from tls.connect itself.
  const server = net.createServer((s) => s.destroy());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const warnings: string[] = [];
  const onWarning = (w: Error & { code?: string }): void => {
    if (w.code === 'DEP0123') warnings.push(w.message);
  };
  process.on('warning', onWarning);
  const connect = async (servername: string): Promise<void> => {
    const s = tls.connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false });
    s.on('error', () => undefined);
    await new Promise((r) => s.once('close', r));
    await new Promise((r) => setImmediate(r));
  };
  try {
    await connect(tlsServerName('127.0.0.1'));
    assert.deepEqual(warnings, []);
    // The control (last: Node warns once per process): an IP address as server name does warn.
    await connect('127.0.0.1');
    assert.equal(warnings.length, 1);
  } finally {
    process.off('warning', onWarning);
    server.close();
  }
});
