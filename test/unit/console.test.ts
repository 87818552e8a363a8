// The console's pure rules: who may call what, which paths are plain, how sessions end,
// and how passwords are kept.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { actions } from '../../src/api/actions.js';
import { peerActions } from '../../src/api/peer-actions.js';
import { actionUrl } from '../../src/api/action.js';
import { allowedActions, cleanAgentPath, decide, MIN_ROLE } from '../../src/console/roles.js';
import { SessionStore } from '../../src/console/sessions.js';
import { addUser, readUsers, removeUser, setPassword, verifyPassword } from '../../src/console/users.js';
import { allowedOrigins, hostAllowed, requestOrigin } from '../../src/console/guard.js';

const sample = (p: string): string => actionUrl({ path: p }, new Proxy({}, { get: () => 'x1' }));

test('every agent action has a console role, and each role gets exactly its share', () => {
  assert.deepEqual(Object.keys(MIN_ROLE).sort(), Object.keys(actions).sort());
  for (const [key, a] of Object.entries(actions)) {
    const min = MIN_ROLE[key as keyof typeof actions];
    for (const role of ['viewer', 'operator', 'admin'] as const) {
      const d = decide(role, a.method, sample(a.path));
      const want = role === 'admin' || (role === 'operator' ? min !== 'admin' : min === 'viewer');
      assert.equal(d.ok, want, `${role} ${a.name}`);
    }
  }
  // A viewer only reads.
  for (const name of allowedActions('viewer')) {
    const a = Object.values(actions).find((x) => x.name === name)!;
    assert.equal(a.method, 'GET', name);
  }
  const operator = allowedActions('operator');
  for (const n of ['vm.start', 'vm.stop', 'migration.create', 'migration.cancel', 'cluster.drain', 'cluster.resume'])
    assert.ok(operator.includes(n), n);
  for (const n of ['pool.add', 'pool.grant', 'host.set', 'switch.create', 'cluster.join', 'vm.create', 'vm.remove'])
    assert.ok(!operator.includes(n), n);
});

test('peer routes, other methods and unknown paths are never forwarded; the event stream is, for every role', () => {
  for (const a of Object.values(peerActions)) {
    const d = decide('admin', a.method, sample(a.path));
    assert.equal(d.ok, false, a.name);
  }
  assert.deepEqual(decide('admin', 'GET', '/metrics'), {
    ok: false,
    status: 404,
    reason: '/metrics is not an agent action the console serves',
  });
  assert.equal(decide('admin', 'DELETE', '/v1/host').ok, false);
  assert.equal(decide('admin', 'GET', '/v1/vms/a/start').ok, false, 'POST actions are not GETs');
  assert.equal(decide('admin', 'POST', '/v1/vms/a/start/extra').ok, false, 'no prefix matches');
  for (const role of ['viewer', 'operator', 'admin'] as const)
    assert.deepEqual(decide(role, 'GET', '/v1/events'), { ok: true, action: 'events' });
  assert.equal(decide('viewer', 'POST', '/v1/events').ok, false);
});

test('only plain paths reach an agent', () => {
  assert.equal(cleanAgentPath('/v1/vms/web1'), '/v1/vms/web1');
  for (const bad of [
    '/v1/vms/..',
    '/v1/vms/%2e%2e',
    '/v1/vms/a%2Fb',
    '/v1/vms/a%5Cb',
    '/v1//vms',
    '/v1/vms/.',
    '/v1/vms/%00',
    '/v1/vms/%zz',
    '/v1/vms/a b',
  ])
    assert.equal(cleanAgentPath(bad), null, bad);
});

test('sessions end when idle, at their lifetime, at logout, and beyond the per-user cap', () => {
  let now = 1_000_000;
  const closed: string[] = [];
  const store = new SessionStore({ idleMs: 1000, absoluteMs: 5000, perUser: 2, total: 3 }, () => now);
  try {
    const a = store.create('ann', 'viewer', 's');
    a.closers.add(() => closed.push('a-stream'));
    now += 900;
    assert.ok(store.touch(a.id), 'used within the idle time');
    now += 900;
    assert.ok(store.touch(a.id), 'used again within the idle time');
    now += 1000;
    assert.equal(store.touch(a.id), undefined, 'idle too long');
    assert.deepEqual(closed, ['a-stream'], 'its event stream is closed with it');

    const b = store.create('ann', 'viewer', 's');
    for (let i = 0; i < 5; i++) {
      now += 900;
      assert.ok(store.touch(b.id), 'busy, within the lifetime');
    }
    now += 900;
    assert.equal(store.touch(b.id), undefined, 'past the absolute lifetime, however busy');

    const c1 = store.create('bob', 'admin', 's');
    const c2 = store.create('bob', 'admin', 's');
    const c3 = store.create('bob', 'admin', 's');
    assert.equal(store.touch(c1.id), undefined, 'the oldest of three goes (cap 2)');
    assert.ok(store.touch(c2.id) && store.touch(c3.id), 'the two newest stay');
    assert.notEqual(c2.csrf, c3.csrf);
    assert.notEqual(c2.id, c2.csrf);
    store.create('cid', 'viewer', 's');
    store.create('dan', 'viewer', 's');
    assert.ok(store.size <= 3, 'the total is capped');
    store.end(c3.id);
    assert.equal(store.touch(c3.id), undefined, 'logged out');
  } finally {
    store.close();
  }
});

test('the users file holds scrypt hashes with their salt and cost, mode 0600, and no password', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fcu-'));
  try {
    const file = path.join(dir, 'sub', 'users.json');
    await addUser(file, 'ann', 'operator', 'correct horse');
    await addUser(file, 'bob', 'viewer', 'correct horse');
    await assert.rejects(addUser(file, 'ann', 'admin', 'another one'), { code: 'E_CONSOLE_USER_EXISTS' });
    await assert.rejects(addUser(file, 'cid', 'admin', 'short'), { code: 'E_INVALID_INPUT' });
    await assert.rejects(addUser(file, '../x', 'admin', 'long enough'), { code: 'E_INVALID_INPUT' });
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    const text = fs.readFileSync(file, 'utf8');
    assert.ok(!text.includes('correct horse'), 'no plain password in the file');
    const [ann, bob] = await readUsers(file);
    assert.equal(ann!.password.algo, 'scrypt');
    assert.ok(ann!.password.N >= 16384, 'an interactive scrypt cost at least');
    assert.notEqual(ann!.password.salt, bob!.password.salt, 'a salt per user');
    assert.notEqual(ann!.password.hash, bob!.password.hash, 'same password, different hashes');
    assert.equal(await verifyPassword(ann!.password, 'correct horse'), true);
    assert.equal(await verifyPassword(ann!.password, 'correct horse!'), false);
    await setPassword(file, 'ann', 'battery staple');
    const [ann2] = await readUsers(file);
    assert.equal(await verifyPassword(ann2!.password, 'battery staple'), true);
    assert.notEqual(ann2!.changedAt, '', 'changedAt is what ends old sessions');
    await removeUser(file, 'bob');
    assert.deepEqual(
      (await readUsers(file)).map((u) => u.name),
      ['ann'],
    );
    await assert.rejects(removeUser(file, 'bob'), { code: 'E_CONSOLE_USER_NOT_FOUND' });
    fs.chmodSync(file, 0o644);
    await assert.rejects(readUsers(file), { code: 'E_CONSOLE_USERS_MODE' });
    assert.deepEqual(await readUsers(path.join(dir, 'none.json')), [], 'no file: no users');
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('origins: the console’s own names only; Origin first, else Referer; "null" is no origin', () => {
  const mine = allowedOrigins({ https: true, names: ['127.0.0.1', 'localhost', '::1'], extraOrigins: [] }, 8443);
  assert.ok(
    mine.has('https://127.0.0.1:8443') && mine.has('https://[::1]:8443') && mine.has('https://localhost:8443'),
    'every name of the certificate',
  );
  assert.equal(mine.has('http://127.0.0.1:8443'), false);
  assert.equal(hostAllowed(mine, { host: '127.0.0.1:8443' }, true), true);
  assert.equal(hostAllowed(mine, { host: 'evil.example:8443' }, true), false);
  assert.equal(hostAllowed(mine, {}, true), false);
  assert.equal(requestOrigin({ origin: 'https://127.0.0.1:8443' }), 'https://127.0.0.1:8443');
  assert.equal(requestOrigin({ referer: 'https://127.0.0.1:8443/#/vms' }), 'https://127.0.0.1:8443');
  assert.equal(requestOrigin({ origin: 'null' }), null);
  assert.equal(requestOrigin({}), null);
  const proxied = allowedOrigins({ https: true, names: [], extraOrigins: ['https://console.example'] }, 8443);
  assert.ok(proxied.has('https://console.example'), 'a proxy origin given with --origin');
});
