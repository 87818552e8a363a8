// A destination agent that listens on 0.0.0.0 with a migration port range: Prepare (called
// with a host certificate, as a source does) opens the NBD export and the migration stream
// on ports of the range, on the address the request came in on (never 0.0.0.0), and
// QEMU really listens there. Real QEMU (-incoming), a real agent over mutual TLS.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { initDomain, issueCert } from '../../src/domain/ca.js';
import { startAgent } from '../../src/agent/main.js';
import { tempDir } from '../helpers.js';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

function call(
  port: number,
  tls: { ca: Buffer; cert: Buffer; key: Buffer },
  method: string,
  urlPath: string,
  body?: unknown,
): Promise<{ status: number; json: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        path: urlPath,
        method,
        ...tls,
        servername: 'dst',
        checkServerIdentity: () => undefined,
        headers: data ? { 'content-type': 'application/json' } : {},
        timeout: 60_000,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, json: JSON.parse(text || '{}') as Record<string, unknown> }),
        );
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

test('Prepare on a 0.0.0.0 agent listens on the range, on the address the source reached', async (t) => {
  const dir = await tempDir(t, 'ferry-ports-');
  const domain = await initDomain(path.join(dir, 'domain'));
  const tlsDir = path.join(dir, 'tls');
  const dst = await issueCert(domain, 'host', 'dst', { outDir: tlsDir, ips: ['127.0.0.1'] });
  fs.renameSync(dst.cert, path.join(tlsDir, 'host.crt'));
  fs.renameSync(dst.key, path.join(tlsDir, 'host.key'));
  fs.copyFileSync(domain.caCert, path.join(tlsDir, 'ca.crt'));
  const src = await issueCert(domain, 'host', 'src', { outDir: path.join(dir, 'src') });
  const tls = { ca: fs.readFileSync(domain.caCert), cert: fs.readFileSync(src.cert), key: fs.readFileSync(src.key) };

  const port = await freePort();
  const from = 50000 + Math.floor(Math.random() * 5000);
  const data = path.join(dir, 'data');
  const agent = await startAgent(
    { name: 'dst', data, listen: `0.0.0.0:${port}`, tlsDir, migrationPorts: `${from}-${from + 15}` },
    { logLevel: 'warn' },
  );
  let jobId = '';
  // An abort first (kills the incoming QEMU, removes its files; harmless when done already), then the agent.
  t.after(async () => {
    if (jobId) await call(port, tls, 'POST', `/v1/peer/incoming/${jobId}/abort`).catch(() => undefined);
    await agent.close();
  });

  // A VM arriving with its disk (shared nothing): Prepare creates the disk, exports it over NBD
  // and waits for the memory stream.
  const vmDir = path.join(data, 'pools', 'local', 'v1');
  const disk = path.join(vmDir, 'disk0.qcow2');
  const id = crypto.randomUUID();
  jobId = crypto.randomUUID();
  const spec = {
    name: 'v1',
    id,
    memoryMiB: 32,
    cpus: 1,
    disks: [{ id: 'disk0', path: disk, format: 'qcow2' }],
    boot: { kind: 'disk' },
    configPath: vmDir,
    checkpointPath: vmDir,
    pagingPath: vmDir,
  };
  const prep = await call(port, tls, 'POST', '/v1/peer/incoming', {
    jobId,
    source: 'src',
    spec,
    tls: false,
    postcopy: false,
    storage: {
      disks: [{ id: 'disk0', path: disk, format: 'qcow2', virtualSizeBytes: 16 * 1024 * 1024, allocatedBytes: 0 }],
      dirs: [vmDir],
      files: [],
    },
  });
  assert.equal(prep.status, 200, JSON.stringify(prep.json));
  const uri = /^tcp:127\.0\.0\.1:(\d+)$/.exec(String(prep.json.uri));
  assert.ok(uri, `the stream URI names the address the source reached, not 0.0.0.0: ${String(prep.json.uri)}`);
  const nbd = prep.json.nbd as { host: string; port: number };
  assert.equal(nbd.host, '127.0.0.1');
  const ports = [Number(uri[1]), nbd.port];
  for (const p of ports) assert.ok(p >= from && p <= from + 15, `port ${p} is in the range ${from}-${from + 15}`);
  assert.notEqual(ports[0], ports[1]);

  // QEMU itself listens on exactly those sockets.
  const listening = execFileSync('ss', ['-Hltn'], { encoding: 'utf8' });
  for (const p of ports)
    assert.match(listening, new RegExp(`127\\.0\\.0\\.1:${p}\\s`), `QEMU listens on 127.0.0.1:${p}`);

  const abort = await call(port, tls, 'POST', `/v1/peer/incoming/${jobId}/abort`);
  assert.equal(abort.status, 200);
  assert.equal(fs.existsSync(disk), false, 'abort removes the disk Prepare created');
});
