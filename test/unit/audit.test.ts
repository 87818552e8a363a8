// The audit trail's line shape, who it names (a console user only when the console's admin
// certificate says so), the targets it derives, the reader's filters, and that appends
// survive both kinds of log rotation.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  AuditLog,
  actorOf,
  auditFilter,
  auditLine,
  outcomeOf,
  parseAuditLine,
  targetOf,
  type AuditEntry,
} from '../../src/agent/audit.js';
import { AuditQuery } from '../../src/api/schemas.js';
import { parseSince } from '../../src/cli/commands/audit.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-audit-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const entry = (over: Partial<AuditEntry> = {}): AuditEntry => ({
  time: '2026-12-01T10:00:00.000Z',
  requestId: '6f1c7a52-6c2e-4a57-9a57-3d1d2f0e0a11',
  host: 'a',
  who: 'alice',
  role: 'admin',
  via: 'certificate',
  certificate: 'admin:alice',
  action: 'vm.start',
  method: 'POST',
  path: '/v1/vms/web1/start',
  target: 'vm:web1',
  outcome: 'ok',
  status: 200,
  code: null,
  ms: 12,
  ...over,
});

test('a line is one JSON object with every field, and reads back as the same entry', () => {
  const line = auditLine(entry());
  assert.ok(!line.includes('\n'));
  assert.deepEqual(Object.keys(JSON.parse(line) as object).sort(), [
    'action',
    'certificate',
    'code',
    'host',
    'method',
    'ms',
    'outcome',
    'path',
    'requestId',
    'role',
    'status',
    'target',
    'time',
    'via',
    'who',
  ]);
  assert.deepEqual(parseAuditLine(line), entry());
  assert.equal(parseAuditLine('{"time":"2026-12-01T10:00:00.000Z","who":"cut'), null);
  assert.equal(parseAuditLine('{"who":"x"}'), null);
  assert.throws(() => auditLine({ ...entry(), outcome: 'maybe' as AuditEntry['outcome'] }));
});

test('the actor: a certificate by its name; a console user only through an admin certificate', () => {
  assert.deepEqual(actorOf({ role: 'admin', name: 'alice' }, undefined, undefined), {
    who: 'alice',
    role: 'admin',
    via: 'certificate',
    certificate: 'admin:alice',
  });
  assert.deepEqual(actorOf({ role: 'admin', name: 'console' }, 'console:ops', 'operator'), {
    who: 'ops',
    role: 'operator',
    via: 'console',
    certificate: 'admin:console',
  });
  // A host cannot pass itself off as a console user.
  assert.deepEqual(actorOf({ role: 'host', name: 'b' }, 'console:ops', 'admin'), {
    who: 'b',
    role: 'host',
    via: 'certificate',
    certificate: 'host:b',
  });
  // A role the console does not have, or a malformed user, is not believed.
  assert.equal(actorOf({ role: 'admin', name: 'console' }, 'console:ops', 'root').role, 'unknown');
  assert.equal(actorOf({ role: 'admin', name: 'c' }, 'console:../x', 'admin').who, 'c');
  assert.equal(actorOf(null, undefined, undefined).who, 'unknown');
});

test('targets: VMs, moves, nodes, pools; nothing for host settings; bodies give only their names', () => {
  assert.equal(targetOf('vm.start', { name: 'web1' }, undefined), 'vm:web1');
  assert.equal(targetOf('migration.cancel', { id: 'abc-123' }, undefined), 'move:abc-123');
  assert.equal(targetOf('cluster.drain', { name: 'b' }, { dryRun: false }), 'node:b');
  assert.equal(targetOf('cluster.remove-vm', { name: 'w1' }, undefined), 'vm:w1');
  assert.equal(targetOf('pool.grant', { name: 'shared' }, { host: 'b' }), 'pool:shared');
  assert.equal(targetOf('migration.create', {}, { vm: 'web1', to: 'b' }), 'vm:web1');
  assert.equal(targetOf('peer.ha-start', {}, { spec: { name: 'w2', disks: [] }, generation: 3 }), 'vm:w2');
  assert.equal(targetOf('vm.create', {}, { name: 'new1', memoryMiB: 64 }), 'vm:new1');
  assert.equal(targetOf('host.set', {}, { maxLive: 2 }), null);
  assert.equal(targetOf('vm.start', { name: 'x'.repeat(500) }, undefined), null);
  assert.deepEqual([200, 204, 403, 409, 500].map(outcomeOf), ['ok', 'ok', 'refused', 'refused', 'failed']);
});

test('the reader filters by time and by person, host or certificate', () => {
  const q = (o: object) => AuditQuery.parse(o);
  const con = entry({ who: 'ops', role: 'operator', via: 'console', certificate: 'admin:console' });
  const old = entry({ time: '2026-11-30T10:00:00.000Z' });
  assert.equal(auditFilter(q({ since: '2026-12-01T00:00:00Z' }))(old), false);
  assert.equal(auditFilter(q({ since: '2026-12-01T00:00:00Z' }))(entry()), true);
  assert.equal(auditFilter(q({ who: 'ops' }))(con), true);
  assert.equal(auditFilter(q({ who: 'console' }))(con), true, 'the certificate finds its console users');
  assert.equal(auditFilter(q({ who: 'alice' }))(con), false);
  assert.equal(auditFilter(q({ who: 'alic' }))(entry()), false, 'names match whole');
  assert.equal(q({}).limit, 1000);
  assert.equal(q({ limit: '5' }).limit, 5);
  assert.throws(() => q({ limit: '0' }));
  assert.throws(() => q({ since: 'yesterday' }));
});

test('--since takes a duration back from now or a date-time', () => {
  const now = Date.parse('2026-12-01T12:00:00.000Z');
  assert.equal(parseSince('30m', now), '2026-12-01T11:30:00.000Z');
  assert.equal(parseSince('2d', now), '2026-11-29T12:00:00.000Z');
  assert.equal(parseSince('90s', now), '2026-12-01T11:58:30.000Z');
  assert.equal(parseSince('2026-12-01T08:00:00Z', now), '2026-12-01T08:00:00.000Z');
  assert.throws(() => parseSince('yesterday', now), /duration like 30m/);
  assert.throws(() => parseSince('5w', now), /duration like 30m/);
});

test('the log appends in order, keeps only the newest LIMIT, skips broken lines and survives rotation', async () => {
  const file = path.join(dir, 'audit.log');
  const errors: unknown[] = [];
  const log = new AuditLog(file, { onError: (e) => errors.push(e) });
  const at = (i: number): string => new Date(Date.parse('2026-12-01T10:00:00.000Z') + i * 1000).toISOString();
  await Promise.all([0, 1, 2].map((i) => log.append(entry({ time: at(i), target: `vm:w${i}` }))));
  assert.equal((await fsp.stat(file)).mode & 0o777, 0o600);
  let r = await log.read(AuditQuery.parse({}));
  assert.deepEqual(
    r.entries.map((e) => e.target),
    ['vm:w0', 'vm:w1', 'vm:w2'],
  );

  // logrotate's default: the file is moved away; the next line starts a new one, and the
  // reader still sees the previous file (FILE.1).
  await fsp.rename(file, `${file}.1`);
  await log.append(entry({ time: at(3), target: 'vm:w3', who: 'b', role: 'host', certificate: 'host:b' }));
  // A line cut by a crash in the middle of the file.
  await fsp.appendFile(file, '{"time":"2026-12-01T10:00:04.000Z","who":\n');
  await log.append(entry({ time: at(5), target: 'vm:w5', outcome: 'refused', status: 403, code: 'E_FORBIDDEN' }));
  r = await log.read(AuditQuery.parse({}));
  assert.deepEqual(
    r.entries.map((e) => e.target),
    ['vm:w0', 'vm:w1', 'vm:w2', 'vm:w3', 'vm:w5'],
  );
  assert.equal(r.skipped, 1);
  r = await log.read(AuditQuery.parse({ who: 'b' }));
  assert.deepEqual(
    r.entries.map((e) => e.target),
    ['vm:w3'],
  );
  r = await log.read(AuditQuery.parse({ limit: '2' }));
  assert.deepEqual(
    r.entries.map((e) => e.target),
    ['vm:w3', 'vm:w5'],
  );

  // copytruncate: the file is copied and cut to nothing under the agent; O_APPEND writes
  // go to its new end, not to the old offset (no hole of zero bytes).
  await fsp.copyFile(file, `${file}.1`);
  await fsp.truncate(file, 0);
  await log.append(entry({ time: at(6), target: 'vm:w6' }));
  const text = await fsp.readFile(file, 'utf8');
  assert.ok(!text.includes('\0'));
  assert.equal(text.trim().split('\n').length, 1);
  r = await log.read(AuditQuery.parse({ since: at(5) }));
  assert.deepEqual(
    r.entries.map((e) => e.target),
    ['vm:w5', 'vm:w6'],
  );
  assert.deepEqual(errors, []);
});

test('the reader does not follow a link put in place of the log', async () => {
  const file = path.join(dir, 'linked.log');
  await fsp.writeFile(path.join(dir, 'secret'), auditLine(entry()) + '\n');
  await fsp.symlink(path.join(dir, 'secret'), file);
  await assert.rejects(new AuditLog(file).read(AuditQuery.parse({})), { code: 'E_AUDIT_UNREADABLE' });
});
