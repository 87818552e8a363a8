// The agent's HTTP layer writes the audit trail (src/agent/server.ts): a real HTTPS server
// with mutual TLS and the domain's certificates (openssl), one action registered. Accepted,
// refused-by-role, refused-by-schema and no-such-route requests are each one line naming
// the certificate, or the console user only when an admin certificate names one; reads are
// not recorded; only an admin reads the trail back.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { initDomain, issueCert, type IssuedCert } from '../../src/domain/ca.js';
import { HostTls } from '../../src/agent/tls.js';
import { buildServer, registerAction } from '../../src/agent/server.js';
import { AuditLog } from '../../src/agent/audit.js';
import { auditRoutes } from '../../src/agent/routes/audit.js';
import { actions } from '../../src/api/actions.js';
import type { AgentConfig } from '../../src/agent/config.js';
import type { AuditEntry } from '../../src/api/schemas.js';
import { AgentClient } from '../../src/api/client.js';
import { CLIENT_IDLE_MS, SERVER_KEEPALIVE_MS } from '../../src/api/keep-alive.js';

let dir = '';
let app: FastifyInstance | null = null;
let port = 0;
let admin: IssuedCert;
let mallory: IssuedCert;
let audit: AuditLog;

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-audit-hook-'));
  const domain = await initDomain(path.join(dir, 'domain'));
  const server = await issueCert(domain, 'host', 'agent1', { outDir: path.join(dir, 'agent1'), ips: ['127.0.0.1'] });
  admin = await issueCert(domain, 'admin', 'alice', { outDir: path.join(dir, 'alice') });
  mallory = await issueCert(domain, 'host', 'mallory', { outDir: path.join(dir, 'mallory') });
  const logger = pino({ level: 'silent' });
  const files = {
    ca: server.ca,
    cert: server.cert,
    key: server.key,
    crl: path.join(dir, 'agent1', 'ca.crl'),
    renewDir: path.join(dir, 'agent1', 'renew'),
  };
  const tls = await HostTls.open(files, { name: 'agent1', port: 0 }, logger);
  audit = new AuditLog(path.join(dir, 'audit.log'));
  const cfg = { name: 'agent1' } as AgentConfig;
  const built = await buildServer({ cfg, tls, logger, domainId: domain.id, audit });
  registerAction(built, actions.switchCreate, ({ body }) =>
    Promise.resolve({ name: body.name, kind: 'user' as const, bridge: null }),
  );
  auditRoutes(built, audit, 'agent1');
  await built.listen({ host: '127.0.0.1', port: 0 });
  app = built;
  port = (built.server.address() as { port: number }).port;
});
after(async () => {
  await app?.close();
  await fsp.rm(dir, { recursive: true, force: true });
});

function call(
  who: IssuedCert,
  method: string,
  url: string,
  o: { body?: unknown; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: string; requestId: string }> {
  const text = o.body === undefined ? undefined : JSON.stringify(o.body);
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path: url,
        ca: fs.readFileSync(who.ca),
        cert: fs.readFileSync(who.cert),
        key: fs.readFileSync(who.key),
        agent: false,
        timeout: 10_000,
        headers: { ...(text === undefined ? {} : { 'content-type': 'application/json' }), ...o.headers },
      },
      (res) => {
        let b = '';
        res.on('data', (c: Buffer) => (b += c.toString()));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: b, requestId: String(res.headers['x-request-id']) }),
        );
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} timed out`)));
    req.on('error', reject);
    req.end(text);
  });
}

test('one line per state-changing request, with who, role, action, target and outcome', async () => {
  const console_ = { 'x-ferry-actor': 'console:ops', 'x-ferry-actor-role': 'operator' };
  const ok = await call(admin, 'POST', '/v1/switches', { body: { name: 'sw1', kind: 'user' } });
  assert.equal(ok.status, 200, ok.body);
  const role = await call(mallory, 'POST', '/v1/switches', { body: { name: 'sw2', kind: 'user' } });
  assert.equal(role.status, 403, role.body);
  const bad = await call(admin, 'POST', '/v1/switches', { body: { name: '../x', kind: 'user' }, headers: console_ });
  assert.equal(bad.status, 400, bad.body);
  const forged = await call(mallory, 'POST', '/v1/switches', { body: { name: 'sw3' }, headers: console_ });
  assert.equal(forged.status, 403, forged.body);
  const none = await call(admin, 'DELETE', '/v1/nothing-here', { headers: console_ });
  assert.equal(none.status, 404, none.body);
  assert.equal((await call(admin, 'GET', '/v1/audit')).status, 200, 'reads are not recorded');

  const peek = await call(mallory, 'GET', '/v1/audit');
  assert.equal(peek.status, 403);
  assert.match(peek.body, /"code":"E_FORBIDDEN"/);
  const read = await call(admin, 'GET', '/v1/audit');
  assert.equal(read.status, 200, read.body);
  const view = JSON.parse(read.body) as { host: string; entries: AuditEntry[]; skipped: number };
  assert.equal(view.host, 'agent1');
  assert.equal(view.skipped, 0);
  const row = (e: AuditEntry): string =>
    [e.who, e.role, e.via, e.certificate, e.action, e.target, e.outcome, e.status, e.code].join(' ');
  assert.deepEqual(view.entries.map(row), [
    'alice admin certificate admin:alice switch.create switch:sw1 ok 200 ',
    'mallory host certificate host:mallory switch.create  refused 403 E_FORBIDDEN',
    'ops operator console admin:alice switch.create switch:../x refused 400 E_INVALID_INPUT',
    'mallory host certificate host:mallory switch.create  refused 403 E_FORBIDDEN',
    'ops operator console admin:alice   refused 404 E_ROUTE_NOT_FOUND',
  ]);
  assert.deepEqual(
    view.entries.map((e) => e.requestId),
    [ok, role, bad, forged, none].map((r) => r.requestId),
    'the x-request-id header names the line',
  );
  assert.equal(view.entries[4]?.path, '/v1/nothing-here');
  assert.ok(view.entries.every((e) => e.host === 'agent1' && e.method !== 'GET'));

  const filtered = JSON.parse((await call(admin, 'GET', '/v1/audit?who=ops&limit=1')).body) as {
    entries: AuditEntry[];
  };
  assert.deepEqual(
    filtered.entries.map((e) => e.status),
    [404],
  );
  const text = await fsp.readFile(audit.file, 'utf8');
  assert.equal(text.trim().split('\n').length, 5);
  assert.ok(!text.includes('"kind"'), 'no request body in the trail');
});

test("an agent keeps a client's idle connection for minutes, and the client reuses it", async () => {
  const server = app?.server;
  assert.ok(server);
  // Longer than the client keeps it: a request never goes out on a socket the server just closed.
  assert.equal(server.keepAliveTimeout, SERVER_KEEPALIVE_MS);
  assert.ok(SERVER_KEEPALIVE_MS > CLIENT_IDLE_MS, 'the server outlasts the client');
  let handshakes = 0;
  const count = (): void => {
    handshakes++;
  };
  server.on('secureConnection', count);
  const client = new AgentClient({
    endpoint: `https://127.0.0.1:${port}`,
    host: 'agent1',
    credentials: { ca: admin.ca, cert: admin.cert, key: admin.key },
  });
  try {
    for (let i = 0; i < 3; i++) {
      await client.request('GET', '/v1/audit?limit=1', undefined, { timeoutMs: 10_000 });
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    client.close();
    server.off('secureConnection', count);
  }
  assert.equal(handshakes, 1, 'three requests, one TLS connection');
});
