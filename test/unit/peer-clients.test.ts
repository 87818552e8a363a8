// The source's clients of destination agents are kept between moves (their keep-alive TLS
// connections reused), one per destination, and made again once the certificate files change.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PeerClients } from '../../src/migration/source.js';
import type { MoveHost } from '../../src/migration/host.js';

test('one client per destination, kept between moves; a renewed certificate makes a new one', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-peers-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const tls = { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'host.pem'), key: path.join(dir, 'host.key') };
  for (const f of Object.values(tls)) fs.writeFileSync(f, 'not read until a connection is made\n');
  const peers = new PeerClients({ tls } as unknown as MoveHost);
  const b = { name: 'host-b', endpoint: 'https://127.0.0.1:7001' };
  const c = { name: 'host-c', endpoint: 'https://127.0.0.1:7002' };
  const first = peers.get(b);
  assert.equal(peers.get(b), first, 'the same client for the next move to host-b');
  assert.notEqual(peers.get(c), first, 'another destination has its own');
  assert.equal(peers.get(c).host, 'host-c');
  const later = new Date(Date.now() + 60_000);
  fs.utimesSync(tls.cert, later, later);
  const renewed = peers.get(b);
  assert.notEqual(renewed, first, 'a client made with the old certificate is not reused');
  assert.equal(peers.get(b), renewed);
  for (const x of [first, renewed, peers.get(c)]) x.close();
});
