// Hostile input: every API route fed wrong types, missing fields, huge numbers, long and
// odd strings, path traversal — each answered 4xx with a clear message and no change of
// state; and TLS that refuses what is not a valid certificate of this domain.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { ferryOk } from './cli.js';
import { useLab } from './lab.js';
import { actions } from '../../src/api/actions.js';
import { peerActions } from '../../src/api/peer-actions.js';
import { issueCert, loadDomain } from '../../src/domain/ca.js';
import type { Action } from '../../src/api/action.js';
import type { z } from 'zod';

const L = useLab(1);

interface Resp {
  status: number;
  body: string;
}

function request(agent: https.Agent, port: number, method: string, url: string, body?: string): Promise<Resp> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path: url,
        agent,
        headers:
          body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        let b = '';
        res.on('data', (c: Buffer) => {
          b += c.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** Values that no field of ours accepts in their place. */
const BAD_STRINGS = [
  '',
  '../../etc',
  '/../../etc/passwd',
  'a'.repeat(100_000),
  'nul\u0000byte',
  '😀'.repeat(500),
  ' leading-space',
  'x'.repeat(64),
];
const BAD_VALUES: unknown[] = [null, -1, 1e308, 1.5, true, [], {}, ...BAD_STRINGS];

/** A valid body per mutating action, so each mutation changes one thing. */
function template(a: Action, lab: string): Record<string, unknown> | undefined {
  const shared = path.join(lab, 'shared');
  switch (a.name) {
    case 'host.set':
      return { maxLive: 2 };
    case 'vm.create':
      return { name: 'fz', memoryMiB: 128, guest: 'bootblock', path: path.join(shared, 'fz') };
    case 'vm.stop':
      return { force: true };
    case 'switch.create':
      return { name: 'fzsw', kind: 'user' };
    case 'pool.add':
      return { name: 'fzpool', kind: 'local', path: shared };
    case 'pool.grant':
    case 'pool.revoke':
      return { host: 'host-a' };
    case 'migration.compare':
    case 'migration.create':
      return { vm: 'nosuchvm', to: { name: 'host-a', endpoint: 'https://127.0.0.1:1' } };
    case 'migration.storage':
      return { vm: 'nosuchvm', path: path.join(shared, 'x') };
    case 'peer.incoming.prepare':
      return { jobId: 'j1', source: 'host-z', spec: {}, tls: true, postcopy: false };
    case 'peer.adopt':
      return { source: 'host-z', spec: {} };
    default:
      return a.body ? {} : undefined;
  }
}

function mutations(a: Action, t: Record<string, unknown>): unknown[] {
  const out: unknown[] = ['not json at all', '[1,2,3]', 'null', JSON.stringify({ ...t, unknownField: 1 })];
  const shape = (a.body as unknown as { shape?: Record<string, z.ZodType> } | undefined)?.shape ?? {};
  for (const k of Object.keys(t)) {
    const { [k]: _drop, ...without } = t;
    // Leaving out a field is hostile only when the field is required.
    if (shape[k] && !shape[k].safeParse(undefined).success) out.push(JSON.stringify(without));
    for (const v of BAD_VALUES) out.push(JSON.stringify({ ...t, [k]: v }));
  }
  return out;
}

async function snapshot(lab: string): Promise<string> {
  const list = async (d: string): Promise<string[]> => {
    const out: string[] = [];
    for (const e of await fsp.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.name === 'run' || e.name.endsWith('.log') || e.name.startsWith('ferry.db')) continue;
      out.push(p);
      if (e.isDirectory()) out.push(...(await list(p)));
    }
    return out;
  };
  const vms = await ferryOk(['vm', 'list', '--json'], { lab });
  const sws = await ferryOk(['switch', 'list', '--json'], { lab });
  const pools = (await ferryOk<Array<{ name: string; granted: string[] }>>(['pool', 'list', '--json'], { lab })).map(
    (p) => [p.name, p.granted],
  );
  const host = await ferryOk<{ migration: unknown }>(['host', 'show', 'host-a', '--json'], { lab });
  return JSON.stringify({ vms, sws, pools, migration: host.migration, files: (await list(lab)).sort() });
}

test('every route answers hostile input with a 4xx and a clear message, and changes nothing', async () => {
  const lab = L.lab;
  await ferryOk(
    ['vm', 'new', 'keep1', '--host', 'host-a', '--guest', 'bootblock', '--path', path.join(lab, 'shared', 'keep1')],
    { lab },
  );
  const port = Number(new URL(L.status.hosts[0]!.endpoint).port);
  const d = path.join(lab, 'domain');
  const agent = new https.Agent({
    keepAlive: true,
    ca: fs.readFileSync(path.join(d, 'ca.crt')),
    cert: fs.readFileSync(path.join(d, 'admins', 'admin.crt')),
    key: fs.readFileSync(path.join(d, 'admins', 'admin.key')),
    checkServerIdentity: () => undefined,
  });
  const before = await snapshot(lab);
  let cases = 0;
  const failures: string[] = [];
  const check = (what: string, r: Resp): void => {
    cases++;
    let body: { error?: { code?: string; message?: string } } = {};
    try {
      body = JSON.parse(r.body) as typeof body;
    } catch {
      /* checked below */
    }
    const msg = body.error?.message ?? '';
    if (r.status < 400 || r.status >= 500 || !body.error?.code || !/^Cannot /.test(msg) || /\n\s+at /.test(r.body)) {
      failures.push(`${what} → ${r.status} ${r.body.slice(0, 200)}`);
    }
  };
  const all = [...Object.values(actions), ...Object.values(peerActions)] as Action[];
  for (const a of all) {
    const params = a.path.includes(':name')
      ? ['keep1', 'shared']
      : a.path.includes(':id')
        ? ['00000000-0000-0000-0000-000000000000']
        : [''];
    // Bad path parameters.
    if (a.path.includes(':')) {
      for (const bad of [
        '..%2F..%2Fetc',
        encodeURIComponent('😀'.repeat(20)),
        'a'.repeat(300),
        '%00x',
        encodeURIComponent('../x'),
      ]) {
        const url = a.path.replace(/:([A-Za-z]+)/, bad);
        const t = template(a, lab);
        check(`${a.method} ${url}`, await request(agent, port, a.method, url, t ? JSON.stringify(t) : undefined));
      }
    }
    // Bad bodies.
    const t = template(a, lab);
    if (t) {
      for (const p of params) {
        const url = a.path.replace(/:([A-Za-z]+)/, p);
        for (const m of mutations(a, t)) {
          const bodyText = typeof m === 'string' ? m : JSON.stringify(m);
          const r = await request(agent, port, a.method, url, bodyText);
          // A mutation may still be a well-formed request that is refused for its meaning
          // (a VM not found): any clear 4xx is right; success never is.
          check(`${a.method} ${url} ${bodyText.slice(0, 80)}`, r);
        }
      }
    }
    // Bad query strings.
    if (a.query) {
      for (const q of [
        'all=maybe',
        'tail=-1',
        'tail=1e99',
        'follow=yes',
        'path=..%2F..%2Fetc',
        'path=' + 'a'.repeat(5000),
      ]) {
        const url = a.path.replace(/:([A-Za-z]+)/, params[0]!) + '?' + q;
        const r = await request(agent, port, a.method, url);
        if (r.status >= 400) check(`${a.method} ${url.slice(0, 80)}`, r);
        else cases++;
        if (r.status >= 500) failures.push(`${a.method} ${url} → ${r.status}`);
      }
    }
  }
  // Path traversal and symlinks out of a pool, through the routes that take paths.
  fs.symlinkSync('/etc', path.join(lab, 'shared', 'etc-link'));
  for (const body of [
    { name: 'fz1', guest: 'bootblock', path: path.join(lab, 'shared', '..', '..', 'outside') },
    { name: 'fz2', guest: 'bootblock', path: path.join(lab, 'shared', 'etc-link', 'fz2') },
    { name: 'fz3', disks: [{ attach: '/etc/passwd' }] },
    { name: 'fz4', disks: [{ attach: path.join(lab, 'shared', 'etc-link', 'passwd') }] },
  ])
    check(`POST /v1/vms ${JSON.stringify(body)}`, await request(agent, port, 'POST', '/v1/vms', JSON.stringify(body)));
  check('GET browse ../..', await request(agent, port, 'GET', '/v1/pools/shared/browse?path=..%2F..%2F..%2Fetc'));
  check('GET browse symlink', await request(agent, port, 'GET', '/v1/pools/shared/browse?path=etc-link'));
  fs.unlinkSync(path.join(lab, 'shared', 'etc-link'));
  agent.destroy();
  assert.deepEqual(failures.slice(0, 20), [], `${failures.length} of ${cases} cases were not a clear 4xx`);
  assert.equal(await snapshot(lab), before, 'no state changed');
  process.stderr.write(`hostile input: ${cases} cases, all answered 4xx with a message, state unchanged\n`);
  assert.ok(cases > 500);
});

function get(port: number, opts: https.RequestOptions): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, path: '/v1/host', method: 'GET', rejectUnauthorized: false, ...opts },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

test('an expired certificate of this domain is refused at the handshake', async () => {
  const port = Number(new URL(L.status.hosts[0]!.endpoint).port);
  const domain = await loadDomain(path.join(L.lab, 'domain'));
  const old = await issueCert(domain, 'admin', 'expired-admin', { outDir: path.join(L.dir, 'expired'), days: -1 });
  const ca = fs.readFileSync(domain.caCert);
  await assert.rejects(get(port, { ca, cert: fs.readFileSync(old.cert), key: fs.readFileSync(old.key) }));
  const fresh = await issueCert(domain, 'admin', 'fresh-admin', { outDir: path.join(L.dir, 'fresh') });
  assert.equal(await get(port, { ca, cert: fs.readFileSync(fresh.cert), key: fs.readFileSync(fresh.key) }), 200);
});

test('a host certificate acts only for itself: no move, hand-over or HA start for another host', async () => {
  const port = Number(new URL(L.status.hosts[0]!.endpoint).port);
  const domain = await loadDomain(path.join(L.lab, 'domain'));
  const mallory = await issueCert(domain, 'host', 'mallory', { outDir: path.join(L.dir, 'mallory') });
  const agent = new https.Agent({
    ca: fs.readFileSync(domain.caCert),
    cert: fs.readFileSync(mallory.cert),
    key: fs.readFileSync(mallory.key),
  });
  const spec = {
    name: 'stolen1',
    id: '6f1c2d3e-4b5a-4c6d-8e7f-8091a2b3c4d5',
    memoryMiB: 64,
    cpus: 1,
    boot: { kind: 'kernel', kernel: 'vmlinuz' },
    configPath: '/var/tmp/stolen1',
    checkpointPath: '/var/tmp/stolen1',
    pagingPath: '/var/tmp/stolen1',
  };
  const before = await ferryOk<Array<{ name: string }>>(['vm', 'list', '--json'], { lab: L.lab });
  const prepare = await request(
    agent,
    port,
    'POST',
    '/v1/peer/incoming',
    JSON.stringify({ jobId: 'mallory-1', source: 'host-b', spec, tls: false, postcopy: false }),
  );
  assert.equal(prepare.status, 403, prepare.body);
  assert.match(prepare.body, /E_FORBIDDEN/);
  const adopt = await request(agent, port, 'POST', '/v1/peer/adopt', JSON.stringify({ source: 'host-b', spec }));
  assert.equal(adopt.status, 403, adopt.body);
  // Not a cluster node here: refused too; on a cluster node only the leader's record starts a VM.
  const ha = await request(
    agent,
    port,
    'POST',
    '/v1/peer/ha-start',
    JSON.stringify({ spec, generation: 1, from: 'host-b' }),
  );
  assert.ok(ha.status >= 400 && ha.status < 500, ha.body);
  const after = await ferryOk<Array<{ name: string }>>(['vm', 'list', '--json'], { lab: L.lab });
  assert.deepEqual(
    after.map((v) => v.name),
    before.map((v) => v.name),
  );
  assert.equal(fs.existsSync('/var/tmp/stolen1'), false);
  agent.destroy();
});
