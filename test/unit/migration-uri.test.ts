// What a source accepts from a destination's Prepare before it reaches QEMU (src/migration/uri.ts),
// and the bounds of an incoming request (src/api/peer-actions.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkNbdAddress,
  checkStreamUri,
  checkTlsHostname,
  expectedTarget,
  type ExpectedTarget,
} from '../../src/migration/uri.js';
import { FerryError } from '../../src/errors.js';
import { INCOMING_LIMITS, IncomingRequest, peerActions } from '../../src/api/peer-actions.js';

const dest: ExpectedTarget = {
  name: 'host-b',
  addresses: new Set(['10.0.0.8', 'fd00::8']),
  networks: ['10.9.0.0/24'],
  ports: { from: 49152, to: 49215 },
};

function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof FerryError);
    assert.equal(err.code, 'E_MIGRATION_URI');
    assert.match(err.message, /^Cannot use the .* that host 'host-b' answered: .*; the VM stays here/);
    return err.message;
  }
  assert.fail('accepted');
}

test('tcp: to an address of the destination on a port of its range is accepted', () => {
  assert.deepEqual(checkStreamUri('tcp:10.0.0.8:49152', dest), { kind: 'tcp', host: '10.0.0.8', port: 49152 });
  assert.deepEqual(checkStreamUri('tcp:10.9.0.77:49215', dest), { kind: 'tcp', host: '10.9.0.77', port: 49215 });
  assert.deepEqual(checkStreamUri('tcp:[fd00::8]:49200', dest), { kind: 'tcp', host: 'fd00::8', port: 49200 });
});

test('exec:, fd:, file:, rdma: and malformed URIs are refused', () => {
  for (const uri of [
    'exec:sh -c "touch /tmp/pwned"',
    'exec:true',
    'fd:3',
    'file:/etc/shadow',
    'rdma:10.0.0.8:49152',
    'TCP:10.0.0.8:49152',
    'tcp:10.0.0.8:49152,foo',
    'tcp:10.0.0.8',
    'tcp:[10.0.0.8]:49152',
    'tcp:10.0.0.8:49152\0',
    '',
  ])
    refusal(() => checkStreamUri(uri, dest));
  assert.match(
    refusal(() => checkStreamUri('exec:true', dest)),
    /only tcp:HOST:PORT/,
  );
});

test('tcp: to another address or port is refused', () => {
  assert.match(
    refusal(() => checkStreamUri('tcp:10.0.0.9:49152', dest)),
    /10\.0\.0\.9 is not an address of that host/,
  );
  assert.match(
    refusal(() => checkStreamUri('tcp:10.0.0.8:22', dest)),
    /port 22 is outside its migration ports/,
  );
  assert.match(
    refusal(() => checkStreamUri('tcp:10.0.0.8:49216', dest)),
    /outside/,
  );
  refusal(() => checkStreamUri('tcp:evil.example:49152', dest));
  // Without a published range any unprivileged port will do, never a privileged one.
  const anyPort = { ...dest, ports: null };
  assert.equal(checkStreamUri('tcp:10.0.0.8:40001', anyPort).kind, 'tcp');
  refusal(() => checkStreamUri('tcp:10.0.0.8:443', anyPort));
});

test('unix: only for a move on this host, inside the run folder, never a control socket', () => {
  refusal(() => checkStreamUri('unix:/run/ferry/vm1/migrate.sock', dest));
  const local = { ...dest, runDir: '/run/ferry/vm1' };
  assert.deepEqual(checkStreamUri('unix:/run/ferry/vm1/migrate.sock', local), {
    kind: 'unix',
    path: '/run/ferry/vm1/migrate.sock',
  });
  for (const uri of [
    'unix:/run/ferry/vm1/../vm2/migrate.sock',
    'unix:/run/ferry/vm1',
    'unix:migrate.sock',
    'unix:/var/run/docker.sock',
    'unix:/run/ferry/vm1/qmp.sock',
  ])
    refusal(() => checkStreamUri(uri, local));
});

test('NBD addresses and TLS names are checked the same way (no option injection)', () => {
  checkNbdAddress({ host: '10.0.0.8', port: 49153 }, dest);
  refusal(() => checkNbdAddress({ host: '10.0.0.8,file.filename=/etc/shadow', port: 49153 }, dest));
  refusal(() => checkNbdAddress({ host: '127.0.0.1', port: 49153 }, dest));
  refusal(() => checkNbdAddress({ host: '10.0.0.8', port: 80 }, dest));
  checkTlsHostname('host-b', dest);
  refusal(() => checkTlsHostname('host-b,tls-creds=x', dest));
});

test("expectedTarget: the agent's address, the configured migration address unless a wildcard, the range", async () => {
  const t = await expectedTarget('host-b', 'https://127.0.0.1:7443', {
    address: '10.0.0.8',
    networks: [],
    ports: '49152-49215',
  });
  assert.deepEqual([...t.addresses].sort(), ['10.0.0.8', '127.0.0.1']);
  assert.deepEqual(t.ports, { from: 49152, to: 49215 });
  const w = await expectedTarget('host-b', 'https://[::1]:7443', { address: '0.0.0.0', networks: ['10.9.0.0/24'] });
  assert.deepEqual([...w.addresses], ['::1']);
  assert.equal(w.ports, null);
  assert.equal(w.runDir, undefined);
});

test('an incoming request carries at most 16 files of 96 MiB together, and the body limit follows', () => {
  const storage = (files: Array<{ path: string; base64?: string; size?: number }>): unknown => ({
    jobId: 'job-1',
    source: 'host-a',
    spec: {},
    tls: true,
    postcopy: false,
    storage: { disks: [], dirs: [], files },
  });
  const issues = (v: unknown): string[] => {
    const r = IncomingRequest.safeParse(v);
    return r.success ? [] : r.error.issues.map((i) => i.path.join('.'));
  };
  const many = Array.from({ length: INCOMING_LIMITS.files + 1 }, (_, i) => ({ path: `/p/f${i}`, base64: '' }));
  assert.ok(issues(storage(many)).includes('storage.files'));
  assert.ok(issues(storage([{ path: '/p/f', base64: 'not base64!' }])).includes('storage.files.0.base64'));
  // Bytes after the JSON (api/incoming-body.ts): each file by its size, the same limit together.
  const files = (v: unknown): string[] => issues(v).filter((p) => p.startsWith('storage'));
  assert.deepEqual(files(storage([{ path: '/p/f', size: 15 * 1048576 }])), []);
  const big = Array.from({ length: 2 }, (_, i) => ({ path: `/p/f${i}`, size: INCOMING_LIMITS.fileBytes / 2 + 1 }));
  assert.ok(issues(storage(big)).includes('storage.files'));
  assert.ok(issues(storage([{ path: '/p/f', size: 3, base64: 'YWJj' }])).includes('storage.files.0'));
  assert.ok(issues(storage([{ path: '/p/f' }])).includes('storage.files.0'));
  const limit = peerActions.prepare.bodyLimit ?? Infinity;
  assert.ok(limit <= 130 * 1048576, `body limit ${limit}`);
  assert.ok(limit >= (INCOMING_LIMITS.fileBytes * 4) / 3, 'the files fit');
});
