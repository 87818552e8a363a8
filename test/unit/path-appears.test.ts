import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathAppears } from '../../src/util/path-appears.js';
import { QmpClient } from '../../src/qemu/qmp.js';

async function dirOf(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-appears-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

// The fallback is 10 s in these tests: ending well before it means the watch woke the wait.
const LONG = 10_000;

test('pathAppears: woken when the file is made, at once when it is there, early on abort', async (t) => {
  const dir = await dirOf(t);
  const file = path.join(dir, 'qmp.sock');
  let t0 = Date.now();
  const waiting = pathAppears(file, LONG);
  setTimeout(() => void fsp.writeFile(path.join(dir, 'other'), ''), 20);
  setTimeout(() => void fsp.writeFile(file, ''), 60);
  await waiting;
  assert.ok(Date.now() - t0 < LONG / 2, `woken by the file's creation (${Date.now() - t0} ms)`);
  await fsp.access(file);

  t0 = Date.now();
  await pathAppears(file, LONG);
  assert.ok(Date.now() - t0 < LONG / 2, 'a file already there ends the wait');

  const ac = new AbortController();
  t0 = Date.now();
  setTimeout(() => ac.abort(), 20);
  await pathAppears(path.join(dir, 'never'), LONG, { signal: ac.signal });
  assert.ok(Date.now() - t0 < LONG / 2, 'an abort ends the wait');
  t0 = Date.now();
  await pathAppears(path.join(dir, 'never'), LONG, { signal: AbortSignal.abort() });
  assert.ok(Date.now() - t0 < LONG / 2, 'so does a signal aborted before');

  t0 = Date.now();
  await pathAppears(path.join(dir, 'missing-folder', 'x'), LONG, { unwatchedMs: 30 });
  const took = Date.now() - t0;
  assert.ok(took >= 25 && took < LONG / 2, `a folder that cannot be watched: unwatchedMs, no error (${took} ms)`);
});

test('QmpClient.connect waits for a socket made after it was called', async (t) => {
  const dir = await dirOf(t);
  const sock = path.join(dir, 'qmp.sock');
  const server = net.createServer((c) => {
    c.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + '\r\n');
    c.on('data', (d) => {
      const msg = JSON.parse(d.toString().trim()) as { id: string };
      c.write(JSON.stringify({ return: {}, id: msg.id }) + '\r\n');
    });
  });
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const connecting = QmpClient.connect(sock, { vm: 'late', timeoutMs: LONG });
  await new Promise((r) => setTimeout(r, 100));
  server.listen(sock);
  const client = await connecting;
  client.close();
});
