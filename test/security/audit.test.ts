// The audit trail on a real lab: requests an agent accepts and refuses — from the admin's
// certificate, from a hostile host's certificate, and from console users through the real
// console — are each one line of the agent's audit log with who asked and what came of it;
// `ferry audit` reads them back and filters them; only an admin may read them.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { ferry, ferryOk } from '../e2e/cli.js';
import { hostData, useLab } from '../e2e/lab.js';
import { request, startConsole, stopAll, type ConsoleUserSpec, type RunningConsole } from '../ui/harness.js';
import { issueCert, loadDomain } from '../../src/domain/ca.js';
import type { AuditEntry } from '../../src/api/schemas.js';

const L = useLab(1);
const pw = (): string => 'pw-' + crypto.randomBytes(9).toString('base64url');
const ADA: ConsoleUserSpec = { name: 'ada', role: 'admin', password: pw() };
const OPS: ConsoleUserSpec = { name: 'ops', role: 'operator', password: pw() };
const procs: ChildProcess[] = [];
after(async () => {
  await stopAll({ browser: null, consoles: procs, lab: '', dir: '' });
});

interface Resp {
  status: number;
  body: string;
}

function call(
  agent: https.Agent,
  port: number,
  method: string,
  url: string,
  o: { body?: unknown; headers?: object } = {},
) {
  const body = o.body === undefined ? undefined : JSON.stringify(o.body);
  return new Promise<Resp>((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path: url,
        agent,
        timeout: 30_000,
        headers: {
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...o.headers,
        },
      },
      (res) => {
        let b = '';
        res.on('data', (c: Buffer) => (b += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

async function consoleCall(c: RunningConsole, u: ConsoleUserSpec, method: string, p: string, body?: unknown) {
  const login = await request(c, 'POST', '/api/login', {
    headers: { origin: c.origin, 'content-type': 'application/json' },
    body: JSON.stringify({ name: u.name, password: u.password }),
  });
  assert.equal(login.status, 200, login.text);
  const cookie = String(login.headers['set-cookie'] ?? '').split(';')[0]!;
  return request(c, method, p, {
    headers: {
      cookie,
      origin: c.origin,
      'x-ferry-csrf': (login.json as { csrf: string }).csrf,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
}

test('accepted and refused requests are in the audit with who asked; only admins read it', async () => {
  const host = L.status.hosts[0]!;
  const port = Number(new URL(host.endpoint).port);
  const domain = await loadDomain(path.join(L.lab, 'domain'));
  const ca = fs.readFileSync(domain.caCert);
  const adminCn = new crypto.X509Certificate(fs.readFileSync(path.join(L.lab, 'domain', 'admins', 'admin.crt'))).subject
    .split('\n')
    .find((l) => l.startsWith('CN='))!
    .slice(3);
  const started = new Date().toISOString();

  // Accepted: the admin (CLI, admin certificate) creates a switch.
  await ferryOk(['switch', 'new', 'audsw1', '--host', host.name], { lab: L.lab });

  // Refused: a hostile host's own certificate asks for the same, and claims to be a console user.
  const mc = await issueCert(domain, 'host', 'mallory', { outDir: path.join(L.dir, 'mallory') });
  const mallory = new https.Agent({ ca, cert: fs.readFileSync(mc.cert), key: fs.readFileSync(mc.key) });
  const evil = await call(mallory, port, 'POST', '/v1/switches', {
    body: { name: 'evil1', kind: 'user' },
    headers: { 'x-ferry-actor': 'console:ada', 'x-ferry-actor-role': 'admin' },
  });
  assert.equal(evil.status, 403, evil.body);
  // Nor may it read the audit.
  const peek = await call(mallory, port, 'GET', '/v1/audit');
  assert.equal(peek.status, 403, peek.body);
  assert.match(peek.body, /E_FORBIDDEN/);

  // Through the real console: an admin user's change is accepted, an operator's start of a VM
  // that does not exist is refused by the agent; the operator may not read the audit.
  const c = await startConsole(L.lab, [ADA, OPS], ['--state-dir', path.join(L.dir, 'console')]);
  procs.push(c.proc);
  const made = await consoleCall(c, ADA, 'POST', `/api/hosts/${host.name}/v1/switches`, {
    name: 'audsw2',
    kind: 'user',
  });
  assert.equal(made.status, 200, made.text);
  const start = await consoleCall(c, OPS, 'POST', `/api/hosts/${host.name}/v1/vms/nosuch/start`);
  assert.equal(start.status, 404, start.text);
  const opsAudit = await consoleCall(c, OPS, 'GET', `/api/hosts/${host.name}/v1/audit`);
  assert.equal(opsAudit.status, 403, opsAudit.text);
  const adaAudit = await consoleCall(c, ADA, 'GET', `/api/hosts/${host.name}/v1/audit`);
  assert.equal(adaAudit.status, 200, adaAudit.text);

  const all = await ferryOk<AuditEntry[]>(['audit', '--since', started, '--json'], { lab: L.lab });
  const find = (who: string, action: string): AuditEntry => {
    const e = all.find((x) => x.who === who && x.action === action);
    assert.ok(e, `${who} ${action} in ${JSON.stringify(all, null, 1)}`);
    return e;
  };
  const mine = find(adminCn, 'switch.create');
  assert.deepEqual(
    [mine.role, mine.via, mine.target, mine.outcome, mine.code, mine.host],
    ['admin', 'certificate', 'switch:audsw1', 'ok', null, host.name],
  );
  const refused = find('mallory', 'switch.create');
  assert.deepEqual(
    [refused.role, refused.via, refused.certificate, refused.outcome, refused.status, refused.code],
    ['host', 'certificate', 'host:mallory', 'refused', 403, 'E_FORBIDDEN'],
  );
  const viaConsole = find('ada', 'switch.create');
  assert.deepEqual(
    [viaConsole.role, viaConsole.via, viaConsole.certificate, viaConsole.target, viaConsole.outcome],
    ['admin', 'console', `admin:${adminCn}`, 'switch:audsw2', 'ok'],
  );
  const opsStart = find('ops', 'vm.start');
  assert.deepEqual(
    [opsStart.role, opsStart.via, opsStart.target, opsStart.outcome, opsStart.code],
    ['operator', 'console', 'vm:nosuch', 'refused', 'E_VM_NOT_FOUND'],
  );
  assert.equal(new Set(all.map((e) => e.requestId)).size, all.length, 'one id per request');
  assert.ok(!all.some((e) => e.method === 'GET'), 'reads are not audited');

  // The filters, and the table for people.
  const byMallory = await ferryOk<AuditEntry[]>(['audit', '--who', 'mallory', '--json'], { lab: L.lab });
  assert.deepEqual(
    byMallory.map((e) => `${e.who} ${e.action} ${e.outcome}`),
    ['mallory switch.create refused'],
  );
  const future = await ferryOk<AuditEntry[]>(['audit', '--since', '2099-01-01T00:00:00Z', '--json'], { lab: L.lab });
  assert.deepEqual(future, []);
  const table = await ferryOk<string>(['audit', '--host', host.name, '--since', '1h'], { lab: L.lab });
  assert.match(table, /mallory\s+host\s+host:mallory\s+switch\.create\s+-\s+refused E_FORBIDDEN/);
  assert.match(table, /ops\s+operator\s+console \(admin:\S+\)\s+vm\.start\s+vm:nosuch\s+refused E_VM_NOT_FOUND/);

  // The CLI with a host's certificate is refused too, with the agent's message.
  const ctxFile = path.join(L.dir, 'mallory', 'context.json');
  await fsp.writeFile(
    ctxFile,
    JSON.stringify({
      ca: domain.caCert,
      cert: mc.cert,
      key: mc.key,
      hosts: [{ name: host.name, endpoint: host.endpoint }],
    }),
  );
  const denied = await ferry(['audit', '--context', ctxFile, '--json']);
  assert.equal(denied.code, 1, denied.stderr);
  assert.match(
    denied.stderr,
    /^ferry: Cannot serve GET \/v1\/audit: the host certificate of 'mallory' may not call it/,
  );

  // On disk: one JSON line per request, readable by root only; no request body in it.
  const file = path.join(hostData(L, host.name), 'audit.log');
  assert.equal((await fsp.stat(file)).mode & 0o777, 0o600);
  const text = await fsp.readFile(file, 'utf8');
  for (const line of text.trim().split('\n')) assert.doesNotThrow(() => JSON.parse(line) as unknown, line);
  assert.ok(!text.includes('"kind"'), 'bodies are not logged');
  mallory.destroy();
});
