// The console against the hostile web page and the stolen session, on a real 2-host lab:
// a page on another origin (cross-site, and a sibling port of the same host, which gets
// the session cookie) tries to start, move and reconfigure through a logged-in browser; a
// script holding a stolen cookie tries without the CSRF token or with another Origin; a
// viewer and an operator try what their role may not; ended sessions try again. Each
// attempt must get a 4xx with a clear message, and the admin's own view of the agents must
// show that nothing changed (no VM started or moved, no pool, no host setting).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Browser } from 'playwright-core';
import {
  launchChromium,
  login,
  request,
  startConsole,
  stopAll,
  type Answer,
  type ConsoleUserSpec,
  type RunningConsole,
} from '../ui/harness.js';
import { ferry, ferryOk } from '../e2e/cli.js';
import { withClients } from '../../src/cli/context.js';
import { actions } from '../../src/api/actions.js';
import type { AgentClient } from '../../src/api/client.js';
import { peerActions } from '../../src/api/peer-actions.js';
import { sleep } from '../../src/util/exec.js';
import { issueCert, loadDomain } from '../../src/domain/ca.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import type { LabStatus } from '../../src/lab/lab.js';
import { labTempDir } from '../helpers.js';

const pw = (): string => 'pw-' + Math.random().toString(36).slice(2);
const ADA: ConsoleUserSpec = { name: 'ada', role: 'admin', password: pw() };
const OPS: ConsoleUserSpec = { name: 'ops', role: 'operator', password: pw() };
const VEE: ConsoleUserSpec = { name: 'vee', role: 'viewer', password: pw() };

let dir = '';
let lab = '';
let status: LabStatus;
let con: RunningConsole;
const procs: Array<ChildProcess | null> = [];
const servers: Array<http.Server | https.Server> = [];
let browser: Browser | null = null;

interface Login {
  cookie: string;
  csrf: string;
  setCookie: string;
}

async function logIn(c: RunningConsole, u: ConsoleUserSpec): Promise<Login> {
  const r = await request(c, 'POST', '/api/login', {
    headers: { origin: c.origin, 'content-type': 'application/json' },
    body: JSON.stringify({ name: u.name, password: u.password }),
  });
  assert.equal(r.status, 200, `login ${u.name}: ${r.text}`);
  const setCookie = String(r.headers['set-cookie'] ?? '');
  return { cookie: setCookie.split(';')[0]!, csrf: (r.json as { csrf: string }).csrf, setCookie };
}

/** A request as the logged-in app sends it (right Origin, cookie and token) unless O overrides. */
function send(
  c: RunningConsole,
  s: Login,
  method: string,
  p: string,
  body?: unknown,
  o: { origin?: string | null; csrf?: string | null; referer?: string } = {},
): Promise<Answer> {
  const origin = o.origin === undefined ? c.origin : o.origin;
  const csrf = o.csrf === undefined ? s.csrf : o.csrf;
  return request(c, method, p, {
    headers: {
      cookie: s.cookie,
      ...(origin !== null ? { origin } : {}),
      ...(o.referer ? { referer: o.referer } : {}),
      ...(csrf !== null && method !== 'GET' ? { 'x-ferry-csrf': csrf } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
}

const errorCode = (a: Answer): string => (a.json as { error?: { code?: string } } | null)?.error?.code ?? '';
const errorMessage = (a: Answer): string => (a.json as { error?: { message?: string } } | null)?.error?.message ?? '';

function refused(a: Answer, status: number, code: string, what: string): void {
  assert.equal(a.status, status, `${what}: ${a.status} ${a.text}`);
  assert.equal(errorCode(a), code, what);
  assert.match(errorMessage(a), /^Cannot /, `${what}: a clear message`);
}

/** What an admin sees through the agents (the lab's admin certificate, straight to each agent). */
async function world(): Promise<object> {
  return withClients({ lab }, async (c) => {
    const hosts = c.all();
    const each = <T>(fn: (a: AgentClient) => Promise<T>): Promise<T[]> => Promise.all(hosts.map(fn));
    const vms = (await each((a) => a.call(actions.vmList, {}, { timeoutMs: 30_000 }))).flat();
    const migrations = (
      await each((a) => a.call(actions.migrationList, { query: { all: 'true' } }, { timeoutMs: 30_000 }))
    ).flat();
    const pools = await each(async (a) =>
      (await a.call(actions.poolList, {}, { timeoutMs: 30_000 })).map(
        (p) => `${p.name}@${a.host}:${p.granted.join(',')}`,
      ),
    );
    const settings = await each(async (a) => {
      const h = await a.call(actions.hostShow, {}, { timeoutMs: 30_000 });
      return { ...h.migration, switches: h.switches.map((s) => s.name) };
    });
    return {
      vms: vms.map((v) => `${v.name}@${v.host}:${v.state}`).sort(),
      migrations: migrations.length,
      pools: pools.flat().sort(),
      settings,
    };
  });
}
let baseline: object;

const moveBody = (): { vm: string; to: { name: string; endpoint: string } } => ({
  vm: 'run1',
  to: { name: 'host-b', endpoint: status.hosts[1]!.endpoint },
});

before(async () => {
  dir = await labTempDir('fsc-');
  lab = path.join(dir, 'lab');
  status = await ferryOk<LabStatus>(['lab', 'up', '--dir', lab, '--hosts', '2', '--json']);
  await ferryOk(
    [
      'vm',
      'new',
      'run1',
      '--host',
      'host-a',
      '--guest',
      'probe',
      '--probe-no-writer',
      '--memory',
      '128',
      '--path',
      path.join(lab, 'shared', 'run1'),
      '--start',
    ],
    { lab },
  );
  await ferryOk(['vm', 'new', 'off1', '--host', 'host-a', '--guest', 'probe', '--memory', '128'], { lab });
  con = await startConsole(lab, [ADA, OPS, VEE]);
  procs.push(con.proc);
  baseline = await world();
  assert.deepEqual((baseline as { vms: string[] }).vms, ['off1@host-a:stopped', 'run1@host-a:running']);
});

after(async () => {
  for (const s of servers) s.closeAllConnections();
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  await stopAll({ browser, consoles: procs, lab, dir });
});

/** The page a hostile site serves to a browser that is logged in to the console. */
function hostilePage(consoleOrigin: string): string {
  const c = JSON.stringify(consoleOrigin);
  const move = JSON.stringify(JSON.stringify(moveBody()));
  const pool = JSON.stringify(JSON.stringify({ name: 'evil', kind: 'shared', path: '/' }));
  return `<!doctype html><html><body>
<iframe name="sink"></iframe>
<iframe id="framed" src=${c}></iframe>
<form id="f" method="POST" action=${JSON.stringify(consoleOrigin + '/api/hosts/host-a/v1/vms/off1/start')}
  enctype="text/plain" target="sink"><input name="x" value="y"></form>
<script>
(async () => {
  const c = ${c};
  const r = {};
  const attempt = async (k, p) => {
    try {
      const res = await p;
      r[k] = res.type + ':' + res.status;
    } catch {
      r[k] = 'blocked';
    }
  };
  const post = { method: 'POST', credentials: 'include' };
  await attempt('start', fetch(c + '/api/hosts/host-a/v1/vms/off1/start', { ...post, mode: 'no-cors' }));
  await attempt('move', fetch(c + '/api/hosts/host-a/v1/migrations', {
    ...post, mode: 'no-cors', headers: { 'content-type': 'text/plain' }, body: ${move},
  }));
  await attempt('pool', fetch(c + '/api/hosts/host-a/v1/pools', {
    ...post, headers: { 'content-type': 'application/json', 'x-ferry-csrf': 'a-guess' }, body: ${pool},
  }));
  try {
    r.read = await (await fetch(c + '/api/session', { credentials: 'include' })).text();
  } catch {
    r.read = 'blocked';
  }
  document.getElementById('f').submit();
  window.results = r;
})();
</script></body></html>`;
}

async function serveHostile(kind: 'http' | 'https'): Promise<string> {
  const handler: http.RequestListener = (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(hostilePage(con.origin));
  };
  const tlsDir = path.join(lab, 'console', 'tls');
  const server =
    kind === 'http'
      ? http.createServer(handler)
      : https.createServer(
          {
            key: fs.readFileSync(path.join(tlsDir, 'console.key')),
            cert: fs.readFileSync(path.join(tlsDir, 'console.crt'), 'utf8') + con.ca,
          },
          handler,
        );
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `${kind}://127.0.0.1:${(server.address() as AddressInfo).port}/`;
}

test('the hostile web page: cross-site and sibling-origin requests via a logged-in browser do nothing', async () => {
  browser = await launchChromium(con.ca);
  const ctx = await browser.newContext();
  try {
    const app = await ctx.newPage();
    await login(app, con.url, ADA);
    for (const kind of ['http', 'https'] as const) {
      const page = await ctx.newPage();
      // Every request the page makes to the console, with the answer Chromium got (null: it
      // shows the page none, e.g. an opaque answer blocked by ORB) and the cookie it really sent.
      const answers: Array<Promise<{ method: string; url: string; status: number | null; cookie: boolean | null }>> =
        [];
      page.on('request', (req) => {
        if (!req.url().startsWith(con.origin + '/api/')) return;
        const res = Promise.race([req.response().catch(() => null), sleep(10_000).then(() => null)]);
        const cookie = Promise.race([
          req.allHeaders().then((h) => /__Host-ferry_session=/.test(h.cookie ?? '')),
          sleep(3000).then(() => null),
        ]);
        answers.push(
          Promise.all([res, cookie]).then(([r, c]) => ({
            method: req.method(),
            url: req.url(),
            status: r?.status() ?? null,
            cookie: c,
          })),
        );
      });
      const formAnswer = page.waitForResponse(
        (r) => r.request().resourceType() === 'document' && /off1\/start$/.test(r.url()),
      );
      await page.goto(await serveHostile(kind));
      await page.waitForFunction(() => 'results' in window, undefined, { timeout: 30_000 });
      await formAnswer;
      await sleep(500);
      const seen = await Promise.all(answers);
      const results = await page.evaluate<Record<string, string>>(
        () => (window as unknown as { results: Record<string, string> }).results,
      );
      assert.equal(results.read, 'blocked', `${kind}: the page cannot read the session (nor its CSRF token)`);
      assert.equal(results.pool, 'blocked', `${kind}: a request with the CSRF header fails its preflight`);
      const posts = seen.filter((s) => s.method === 'POST');
      assert.ok(
        posts.length >= 3,
        `${kind}: the no-cors posts and the form reached the console: ${JSON.stringify(seen)}`,
      );
      // An opaque answer (no-cors) is not shown to the page (null); the form's is: 403. That
      // nothing happened through either is what world() shows at the end.
      for (const p of posts)
        assert.ok(p.status === 403 || p.status === null, `${kind}: ${p.url} refused: ${JSON.stringify(p)}`);
      assert.ok(
        posts.some((p) => p.status === 403 && p.url.endsWith('/off1/start')),
        `${kind}: the form post got 403: ${JSON.stringify(posts)}`,
      );
      if (kind === 'https')
        assert.ok(
          posts.some((p) => p.cookie),
          'a sibling port of the same host gets the session cookie (same site); the Origin check stops it',
        );
      else
        assert.ok(!posts.some((p) => p.cookie === true), 'SameSite=Strict keeps the cookie from a cross-site request');
      assert.ok(
        !page.frames().some((f) => f !== page.mainFrame() && f.url().startsWith(con.origin)),
        `${kind}: the console is not framed: ${page
          .frames()
          .map((f) => f.url())
          .join(' ')}`,
      );
      await page.close();
    }
  } finally {
    await ctx.close();
  }
  assert.deepEqual(await world(), baseline, 'nothing started, moved or added');
});

test('no session: every agent action, the event stream and the session get 401; the page has no data', async () => {
  const all = [...Object.values(actions), ...Object.values(peerActions)].map((a) => ({
    method: a.method,
    path: a.path.replace(/:[A-Za-z]+/g, 'run1'),
  }));
  all.push({ method: 'GET', path: '/v1/events' });
  const forged = '__Host-ferry_session=' + 'A'.repeat(43);
  let n = 0;
  for (const { method, path: p } of all)
    for (const cookie of [undefined, forged]) {
      const a = await request(con, method, '/api/hosts/host-a' + p, {
        // The console's own Origin: only the missing session stops these.
        headers: { origin: con.origin, ...(cookie ? { cookie } : {}) },
      });
      refused(a, 401, 'E_UNAUTHENTICATED', `${method} ${p} ${cookie ? 'forged cookie' : 'no cookie'}`);
      n++;
    }
  assert.ok(n >= 2 * 40, `${n} requests`);
  for (const [m, p] of [
    ['GET', '/api/session'],
    ['POST', '/api/logout'],
    ['GET', '/api/hosts/host-z/v1/vms'],
    ['GET', '/api/users'],
  ] as const)
    refused(await request(con, m, p, { headers: { origin: con.origin } }), 401, 'E_UNAUTHENTICATED', `${m} ${p}`);
  // The app's files are served to anyone and name no VM, host or endpoint.
  for (const p of ['/', '/index.html', '/vms', '/migrations']) {
    const page = await request(con, 'GET', p);
    assert.equal(page.status, 200);
    for (const secret of ['run1', 'off1', 'host-a', 'host-b', new URL(status.hosts[0]!.endpoint).host])
      assert.ok(!page.text.includes(secret), `${p} does not contain ${secret}`);
  }
  assert.deepEqual(await world(), baseline);
});

test('a wrong password and an unknown user get the same answer in the same time', async () => {
  const tryLogin = async (name: string, password: string): Promise<{ a: Answer; ms: number }> => {
    const t0 = performance.now();
    const a = await request(con, 'POST', '/api/login', {
      headers: { origin: con.origin, 'content-type': 'application/json' },
      body: JSON.stringify({ name, password }),
    });
    return { a, ms: performance.now() - t0 };
  };
  const wrong: number[] = [];
  const unknown: number[] = [];
  for (let i = 0; i < 6; i++) {
    // Interleaved, so a change of load on the machine hits both alike.
    const w = await tryLogin(VEE.name, VEE.password + 'x');
    const u = await tryLogin(`nobody${i}`, VEE.password);
    for (const { a } of [w, u]) {
      refused(a, 401, 'E_UNAUTHENTICATED', 'refused login');
      assert.equal(errorMessage(a), 'Cannot log in: wrong user name or password');
      assert.equal(a.headers['set-cookie'], undefined);
    }
    assert.equal(w.a.text, u.a.text, 'the same body');
    wrong.push(w.ms);
    unknown.push(u.ms);
  }
  const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  const right = await tryLogin(VEE.name, VEE.password);
  assert.equal(right.a.status, 200);
  const mw = median(wrong);
  const mu = median(unknown);
  console.log(`login refusal medians: wrong password ${mw.toFixed(0)} ms, unknown user ${mu.toFixed(0)} ms`);
  // Both run one scrypt check (the unknown name against a decoy hash) and the same delay.
  assert.ok(mw >= 300 && mu >= 300, 'a refused login waits');
  assert.ok(Math.abs(mw - mu) < 0.25 * Math.max(mw, mu), `medians ${mw} vs ${mu} ms`);
});

test('a stolen cookie: without the CSRF token, with a wrong one, or from another origin, nothing happens', async () => {
  const ada = await logIn(con, ADA);
  const ops = await logIn(con, OPS);
  const start = '/api/hosts/host-a/v1/vms/off1/start';
  refused(await send(con, ada, 'POST', start, undefined, { csrf: null }), 403, 'E_CONSOLE_CSRF', 'no token');
  refused(
    await send(con, ada, 'POST', start, undefined, { csrf: 'x'.repeat(43) }),
    403,
    'E_CONSOLE_CSRF',
    'wrong token',
  );
  refused(await send(con, ada, 'POST', start, undefined, { csrf: ops.csrf }), 403, 'E_CONSOLE_CSRF', "another's token");
  refused(
    await send(con, ada, 'POST', '/api/hosts/host-a/v1/migrations', moveBody(), { origin: 'https://evil.example' }),
    403,
    'E_CONSOLE_ORIGIN',
    'another origin',
  );
  refused(
    await send(con, ada, 'POST', start, undefined, { origin: con.origin.replace(/\d+$/, '1') }),
    403,
    'E_CONSOLE_ORIGIN',
    'another port',
  );
  refused(await send(con, ada, 'POST', start, undefined, { origin: null }), 403, 'E_CONSOLE_ORIGIN', 'no origin');
  refused(await send(con, ada, 'POST', start, undefined, { origin: 'null' }), 403, 'E_CONSOLE_ORIGIN', 'origin null');
  refused(
    await send(con, ada, 'POST', start, undefined, { origin: null, referer: 'https://evil.example/x' }),
    403,
    'E_CONSOLE_ORIGIN',
    'a foreign referer',
  );
  refused(await send(con, ada, 'GET', start), 403, 'E_CONSOLE_FORBIDDEN', 'a GET changes nothing');
  refused(
    await send(con, ada, 'DELETE', '/api/hosts/host-a/v1/vms/off1', undefined, { csrf: null }),
    403,
    'E_CONSOLE_CSRF',
    'rm',
  );
  // The same requests pass with the console's Referer (no Origin) and the token: the refusals above are the checks.
  const cmp = await send(
    con,
    ops,
    'POST',
    '/api/hosts/host-a/v1/compare',
    { vm: 'run1', to: moveBody().to },
    {
      origin: null,
      referer: con.url + '#/vms',
    },
  );
  assert.equal(cmp.status, 200, cmp.text);
  const bare = await request(con, 'POST', start, { headers: { origin: con.origin } });
  refused(bare, 401, 'E_UNAUTHENTICATED', 'no cookie');
  assert.deepEqual(await world(), baseline);
});

test('a viewer reads and follows events but cannot start, stop, pause, move or cancel', async () => {
  const vee = await logIn(con, VEE);
  const list = await send(con, vee, 'GET', '/api/hosts/host-a/v1/vms');
  assert.equal(list.status, 200);
  assert.deepEqual((list.json as VmView[]).map((v) => v.name).sort(), ['off1', 'run1']);
  for (const [m, p, body] of [
    ['POST', '/api/hosts/host-a/v1/vms/off1/start', undefined],
    ['POST', '/api/hosts/host-a/v1/vms/run1/stop', { force: true }],
    ['POST', '/api/hosts/host-a/v1/vms/run1/pause', undefined],
    ['POST', '/api/hosts/host-a/v1/migrations', moveBody()],
    ['POST', '/api/hosts/host-a/v1/storage-moves', { vm: 'run1', path: path.join(lab, 'shared', 'x') }],
    ['POST', '/api/hosts/host-a/v1/migrations/00000000/cancel', undefined],
    ['POST', '/api/hosts/host-a/v1/compare', { vm: 'run1', to: moveBody().to }],
    ['GET', '/api/hosts/host-a/v1/vms/run1/console', undefined],
  ] as const) {
    const r = await send(con, vee, m, p, body);
    refused(r, 403, 'E_CONSOLE_FORBIDDEN', `viewer ${m} ${p}`);
    assert.match(errorMessage(r), /needs the (operator|admin) role and you are viewer/);
  }
  const events = await new Promise<number>((resolve, reject) => {
    const req = https.get(
      con.origin + '/api/hosts/host-a/v1/events',
      { ca: con.ca, headers: { cookie: vee.cookie } },
      (res) => {
        resolve(res.statusCode ?? 0);
        assert.match(String(res.headers['content-type']), /text\/event-stream/);
        req.destroy();
      },
    );
    req.on('error', reject);
  });
  assert.equal(events, 200, 'every role follows the event stream');
  assert.deepEqual(await world(), baseline);
});

test('an operator cannot add pools, change host settings or switches, add or remove VMs, join clusters', async () => {
  const ops = await logIn(con, OPS);
  for (const [m, p, body] of [
    ['POST', '/api/hosts/host-a/v1/pools', { name: 'evil', kind: 'shared', path: '/' }],
    ['POST', '/api/hosts/host-a/v1/pools/shared/grant', { host: 'host-b' }],
    ['POST', '/api/hosts/host-a/v1/pools/shared/revoke', { host: 'host-b' }],
    ['PATCH', '/api/hosts/host-a/v1/host', { maxLive: 9, tls: false }],
    ['POST', '/api/hosts/host-a/v1/switches', { name: 'evil', kind: 'user' }],
    ['POST', '/api/hosts/host-a/v1/vms', { name: 'evil' }],
    ['DELETE', '/api/hosts/host-a/v1/vms/off1', undefined],
    ['PUT', '/api/hosts/host-a/v1/cluster', { name: 'evil', endpoints: ['https://127.0.0.1:1'] }],
    ['PATCH', '/api/hosts/host-a/v1/cluster/limits', { maxTotal: 1 }],
  ] as const) {
    const r = await send(con, ops, m, p, body);
    refused(r, 403, 'E_CONSOLE_FORBIDDEN', `operator ${m} ${p}`);
    assert.match(errorMessage(r), /needs the admin role and you are operator/);
  }
  const cmp = await send(con, ops, 'POST', '/api/hosts/host-a/v1/compare', { vm: 'run1', to: moveBody().to });
  assert.equal(cmp.status, 200, `an operator may compare: ${cmp.text}`);
  assert.deepEqual(await world(), baseline);
});

test('peer routes, metrics and odd paths are refused, even for an admin', async () => {
  const ada = await logIn(con, ADA);
  for (const [m, p, body] of [
    ['GET', '/v1/peer/vms', undefined],
    ['GET', '/v1/peer/cpu-models', undefined],
    ['POST', '/v1/peer/incoming', { jobId: 'x' }],
    ['POST', '/v1/peer/ha-start', { vm: 'off1' }],
    ['POST', '/v1/peer/adopt', { source: 'host-b', spec: {} }],
  ] as const)
    refused(await send(con, ada, m, '/api/hosts/host-a' + p, body), 403, 'E_CONSOLE_FORBIDDEN', p);
  for (const p of ['/metrics', '/openapi.json', '/v1/nothing'])
    refused(await send(con, ada, 'GET', '/api/hosts/host-a' + p), 404, 'E_ROUTE_NOT_FOUND', p);
  for (const p of ['/v1/vms/..%2Fpeer%2Fvms', '/v1/vms/%2e%2e/peer/vms', '/v1//peer/vms'])
    refused(await send(con, ada, 'GET', '/api/hosts/host-a' + p), 400, 'E_CONSOLE_BAD_PATH', p);
  refused(await send(con, ada, 'GET', '/api/hosts/host-z/v1/vms'), 404, 'E_HOST_NOT_FOUND', 'unknown host');
  assert.deepEqual(await world(), baseline);
});

test('logged out, removed, re-passworded, idle, too old or crowded-out sessions get 401', async () => {
  // Logout ends the session and the event stream it holds open.
  const vee = await logIn(con, VEE);
  let ended: Promise<void> = Promise.resolve();
  const stream = await new Promise<http.IncomingMessage>((resolve, reject) => {
    https
      .get(con.origin + '/api/hosts/host-a/v1/events', { ca: con.ca, headers: { cookie: vee.cookie } }, (res) => {
        ended = new Promise((r) => res.once('close', r));
        res.resume();
        resolve(res);
      })
      .on('error', reject);
  });
  assert.equal(stream.statusCode, 200);
  assert.equal((await send(con, vee, 'POST', '/api/logout')).status, 200);
  await ended; // the stream the session held open is closed with it
  refused(await send(con, vee, 'GET', '/api/session'), 401, 'E_UNAUTHENTICATED', 'after logout');
  refused(await send(con, vee, 'GET', '/api/hosts/host-a/v1/vms'), 401, 'E_UNAUTHENTICATED', 'after logout');

  // A removed user, a changed password: the session ends at the next request.
  const tmp: ConsoleUserSpec = { name: 'tmp', role: 'operator', password: pw() };
  const added = await ferry(['console', 'user', 'add', 'tmp', '--role', 'operator'], {
    lab,
    env: { FERRY_CONSOLE_PASSWORD: tmp.password },
  });
  assert.equal(added.code, 0, added.stderr);
  const t1 = await logIn(con, tmp);
  const next = pw();
  const r = await ferry(['console', 'user', 'passwd', 'tmp'], { lab, env: { FERRY_CONSOLE_PASSWORD: next } });
  assert.equal(r.code, 0, r.stderr);
  refused(await send(con, t1, 'GET', '/api/session'), 401, 'E_UNAUTHENTICATED', 'after passwd');
  const t2 = await logIn(con, { ...tmp, password: next });
  assert.equal((await ferry(['console', 'user', 'rm', 'tmp'], { lab })).code, 0);
  refused(await send(con, t2, 'GET', '/api/session'), 401, 'E_UNAUTHENTICATED', 'after user rm');

  // Short limits on a second console of the same lab: idle, lifetime and the per-user cap.
  const short = await startConsole(
    lab,
    [],
    ['--idle-timeout', '2s', '--session-lifetime', '5s', '--max-sessions', '2'],
  );
  procs.push(short.proc);
  const idle = await logIn(short, VEE);
  await sleep(2500);
  refused(await send(short, idle, 'GET', '/api/session'), 401, 'E_UNAUTHENTICATED', 'idle');
  const busy = await logIn(short, VEE);
  for (let i = 0; i < 4; i++) {
    await sleep(1000);
    assert.equal((await send(short, busy, 'GET', '/api/session')).status, 200, 'in use, within its lifetime');
  }
  await sleep(1500);
  refused(await send(short, busy, 'GET', '/api/session'), 401, 'E_UNAUTHENTICATED', 'past the lifetime');
  const s1 = await logIn(short, VEE);
  const s2 = await logIn(short, VEE);
  const s3 = await logIn(short, VEE);
  refused(await send(short, s1, 'GET', '/api/session'), 401, 'E_UNAUTHENTICATED', 'crowded out');
  assert.equal((await send(short, s2, 'GET', '/api/session')).status, 200);
  assert.equal((await send(short, s3, 'GET', '/api/session')).status, 200);
  const wrong = await request(short, 'POST', '/api/login', {
    headers: { origin: short.origin, 'content-type': 'application/json' },
    body: JSON.stringify({ name: VEE.name, password: 'not-the-password' }),
  });
  refused(wrong, 401, 'E_UNAUTHENTICATED', 'wrong password');
  assert.equal(wrong.headers['set-cookie'], undefined);
  assert.deepEqual(await world(), baseline);
});

test('every answer carries the security headers; the session cookie is HttpOnly, Secure, SameSite=Strict', async () => {
  const ada = await logIn(con, ADA);
  assert.match(ada.setCookie, /^__Host-ferry_session=[A-Za-z0-9_-]{40,};/);
  for (const attr of ['HttpOnly', 'Secure', 'SameSite=Strict', 'Path=/']) assert.ok(ada.setCookie.includes(attr), attr);
  assert.ok(!/Domain=/i.test(ada.setCookie), 'host-only');
  const answers = [
    await request(con, 'GET', '/'),
    await request(con, 'GET', '/api/session'),
    await send(con, ada, 'GET', '/api/hosts/host-a/v1/vms'),
    await send(con, ada, 'GET', '/api/hosts/host-a/v1/peer/vms'),
    await send(con, ada, 'POST', '/api/hosts/host-a/v1/vms/off1/start', undefined, { csrf: null }),
  ];
  for (const a of answers) {
    const csp = String(a.headers['content-security-policy']);
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    assert.equal(a.headers['x-frame-options'], 'DENY');
    assert.equal(a.headers['x-content-type-options'], 'nosniff');
    assert.equal(a.headers['referrer-policy'], 'no-referrer');
    assert.match(String(a.headers['strict-transport-security']), /max-age=\d{7,}/);
  }
  assert.equal((await request(con, 'GET', '/api/session')).headers['cache-control'], 'no-store');
  const evil = await request(con, 'GET', '/', { headers: { host: 'evil.example' } });
  refused(evil, 421, 'E_CONSOLE_HOST', 'a DNS-rebinding host name');
});

test('the users file holds scrypt hashes only, readable by its owner alone', () => {
  const file = path.join(lab, 'console', 'users.json');
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  const text = fs.readFileSync(file, 'utf8');
  for (const u of [ADA, OPS, VEE]) {
    assert.ok(!text.includes(u.password), `no plain password of ${u.name}`);
    assert.ok(!text.includes(Buffer.from(u.password).toString('base64')), `no base64 password of ${u.name}`);
    assert.ok(!text.includes(Buffer.from(u.password).toString('hex')), `no hex password of ${u.name}`);
  }
  const users = (JSON.parse(text) as { users: Array<{ name: string; password: { algo: string; salt: string } }> })
    .users;
  assert.deepEqual(
    users.map((u) => u.password.algo),
    ['scrypt', 'scrypt', 'scrypt'],
  );
  assert.equal(new Set(users.map((u) => u.password.salt)).size, 3, 'a salt per user');
});

test('plain HTTP is refused off loopback; a password or token is never a flag', async () => {
  const offLoopback = await ferry(['console', '--insecure-http', '--listen', '0.0.0.0:0'], { lab });
  assert.equal(offLoopback.code, 2, offLoopback.stderr);
  assert.match(offLoopback.stderr, /Cannot serve plain HTTP on 0\.0\.0\.0/);
  const token = await ferry(['console', '--token', 'abc'], { lab });
  assert.equal(token.code, 2);
  assert.match(token.stderr, /Cannot use --token/);
  const noPw = await ferry(['console', 'user', 'add', 'x1', '--role', 'viewer', '--password', 'abc'], { lab });
  assert.notEqual(noPw.code, 0, 'no --password flag');
  const noUsers = await ferry(['console', '--state-dir', path.join(dir, 'empty'), '--listen', '127.0.0.1:0'], { lab });
  assert.equal(noUsers.code, 1);
  assert.match(noUsers.stderr, /nobody could log in/);
});

test('the console names its user to the agent (X-Ferry-Actor) and calls it with the admin certificate', async () => {
  // A stand-in agent named "spy" with a host certificate of the lab's domain records what it gets.
  const domain = await loadDomain(path.join(lab, 'domain'));
  const spyDir = path.join(dir, 'spy');
  const cert = await issueCert(domain, 'host', 'spy', { outDir: spyDir });
  const got: Array<{ method: string; url: string; actor: string; client: string }> = [];
  const spy = https.createServer(
    {
      key: fs.readFileSync(cert.key),
      cert: fs.readFileSync(cert.cert),
      ca: fs.readFileSync(cert.ca),
      requestCert: true,
    },
    (req, res) => {
      const socket: unknown = req.socket;
      assert.ok(socket instanceof tls.TLSSocket, 'a TLS connection');
      const peer = socket.getPeerCertificate();
      got.push({
        method: req.method ?? '',
        url: req.url ?? '',
        actor: String(req.headers['x-ferry-actor']),
        client: `${String(peer.subject.OU)}/${String(peer.subject.CN)}`,
      });
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(req.method === 'GET' ? '[]' : '{"ok":true}');
    },
  );
  servers.push(spy);
  await new Promise<void>((r) => spy.listen(0, '127.0.0.1', r));
  const ctxFile = path.join(spyDir, 'context.json');
  await fsp.writeFile(
    ctxFile,
    JSON.stringify({
      ca: path.join(lab, 'domain', 'ca.crt'),
      cert: path.join(lab, 'domain', 'admins', 'admin.crt'),
      key: path.join(lab, 'domain', 'admins', 'admin.key'),
      hosts: [{ name: 'spy', endpoint: `https://127.0.0.1:${(spy.address() as AddressInfo).port}` }],
    }),
  );
  const c = await startConsole(lab, [OPS], ['--context', ctxFile, '--state-dir', path.join(spyDir, 'console')]);
  procs.push(c.proc);
  const ops = await logIn(c, OPS);
  assert.equal((await send(c, ops, 'GET', '/api/hosts/spy/v1/vms')).status, 200);
  assert.equal((await send(c, ops, 'POST', '/api/hosts/spy/v1/vms/web1/start')).status, 200);
  assert.deepEqual(got, [
    { method: 'GET', url: '/v1/vms', actor: 'console:ops', client: 'ferry-admin/admin' },
    { method: 'POST', url: '/v1/vms/web1/start', actor: 'console:ops', client: 'ferry-admin/admin' },
  ]);
});

test('an operator moves and cancels a move, a viewer cannot cancel; no user management in the console', async () => {
  const ops = await logIn(con, OPS);
  const vee = await logIn(con, VEE);
  const ada = await logIn(con, ADA);
  const usersFile = path.join(lab, 'console', 'users.json');
  const usersBefore = fs.readFileSync(usersFile, 'utf8');
  for (const s of [ops, ada])
    for (const [m, p] of [
      ['GET', '/api/users'],
      ['POST', '/api/users'],
      ['DELETE', '/api/users/vee'],
      ['PUT', '/api/users/vee/password'],
    ] as const)
      refused(await send(con, s, m, p, m === 'GET' ? undefined : {}), 404, 'E_ROUTE_NOT_FOUND', `${m} ${p}`);
  assert.equal(fs.readFileSync(usersFile, 'utf8'), usersBefore, 'users are managed only on the console host');

  // A slow move (1 MiB/s) that the viewer tries to cancel and the operator cancels.
  const slow = await send(con, ops, 'POST', '/api/hosts/host-a/v1/migrations', {
    ...moveBody(),
    policy: { bandwidthMiBps: 1 },
  });
  assert.equal(slow.status, 200, slow.text);
  const id = (slow.json as MigrationRecord).id;
  const show = async (): Promise<MigrationRecord> =>
    (await send(con, vee, 'GET', `/api/hosts/host-a/v1/migrations/${id}`)).json as MigrationRecord;
  const cancel = `/api/hosts/host-a/v1/migrations/${id}/cancel`;
  const denied = await send(con, vee, 'POST', cancel);
  refused(denied, 403, 'E_CONSOLE_FORBIDDEN', 'viewer cancel');
  assert.match(errorMessage(denied), /migration\.cancel needs the operator role and you are viewer/);
  assert.ok(!['cancelled', 'failed'].includes((await show()).state), 'still moving after the viewer tried');
  const cancelled = await send(con, ops, 'POST', cancel);
  assert.equal(cancelled.status, 200, cancelled.text);
  for (let i = 0; i < 120 && (await show()).state !== 'cancelled'; i++) await sleep(500);
  assert.equal((await show()).state, 'cancelled');
  const vmsAfterCancel = (await send(con, vee, 'GET', '/api/hosts/host-a/v1/vms')).json as VmView[];
  assert.equal(vmsAfterCancel.find((v) => v.name === 'run1')?.state, 'running', 'the VM stays where it ran');

  // The same move at full speed lands on host-b.
  const move = await send(con, ops, 'POST', '/api/hosts/host-a/v1/migrations', moveBody());
  assert.equal(move.status, 200, move.text);
  const moveId = (move.json as MigrationRecord).id;
  let rec: MigrationRecord | undefined;
  for (let i = 0; i < 240; i++) {
    rec = (await send(con, vee, 'GET', `/api/hosts/host-a/v1/migrations/${moveId}`)).json as MigrationRecord;
    if (['completed', 'failed', 'cancelled'].includes(rec.state)) break;
    await sleep(500);
  }
  assert.equal(rec?.state, 'completed', JSON.stringify(rec));
  const onB = (await send(con, vee, 'GET', '/api/hosts/host-b/v1/vms')).json as VmView[];
  assert.equal(onB.find((v) => v.name === 'run1')?.state, 'running');
});
