// The migration port range: parsing, the overlap with the agent's port, the allocator (a
// port in the range, skipped while another listener or move holds it, free again after
// release), and the address a destination advertises when it listens on 0.0.0.0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { PortAllocator, assertExcludes, parsePortRange, portAllocatorFor } from '../../src/agent/ports.js';
import { advertisedMigrationAddress } from '../../src/agent/migration-address.js';
import { FerryError } from '../../src/errors.js';

const freeRange = async (size: number): Promise<{ from: number; to: number }> => {
  // A window of high ports nothing listens on (checked by binding each).
  for (let k = 0, from = 40000 + Math.floor(Math.random() * 5000); k < 50; k++, from += size) {
    const ok = await Promise.all(
      Array.from({ length: size }, (_, i) => listen(from + i).then((s) => (s ? (s.close(), true) : false))),
    );
    if (ok.every(Boolean)) return { from, to: from + size - 1 };
  }
  throw new Error('no free window of ports found');
};
const listen = (port: number): Promise<net.Server | null> =>
  new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(null));
    s.listen({ host: '127.0.0.1', port, exclusive: true }, () => resolve(s));
  });

test('a port range parses and refuses what an admin could not open', () => {
  assert.deepEqual(parsePortRange('49152-49215', 'r'), { from: 49152, to: 49215 });
  for (const bad of ['49215-49152', '80-90', '5000', '5000-70000', 'a-b', '6000-6000'])
    assert.throws(() => parsePortRange(bad, 'migration ports'), /Cannot use migration ports .*such as 49152-49215/);
});

test("a range that contains the agent's port is refused with the fix", () => {
  assert.doesNotThrow(() => assertExcludes({ from: 49152, to: 49215 }, 7443, 'r'));
  assert.throws(
    () => assertExcludes({ from: 7000, to: 8000 }, 7443, 'migration ports'),
    (e: FerryError) =>
      e.code === 'E_INVALID_INPUT' && /includes the agent's own port 7443; choose a range without it/.test(e.message),
  );
});

test('the allocator hands out free ports of the range, skips held and busy ones, reuses released ones', async () => {
  const range = await freeRange(3);
  const busy = await listen(range.from + 1);
  assert.ok(busy, 'the test holds one port of the range');
  try {
    const a = new PortAllocator(range);
    const l1 = await a.allocate('127.0.0.1');
    const l2 = await a.allocate('127.0.0.1');
    const got = [l1.port, l2.port].sort();
    assert.deepEqual(got, [range.from, range.to], 'the busy port is skipped and no port is given twice');
    await assert.rejects(a.allocate('127.0.0.1'), (e: FerryError) => {
      assert.equal(e.code, 'E_PORTS_EXHAUSTED');
      assert.match(e.message, new RegExp(`every port of ${range.from}-${range.to} is in use.*widen "migrationPorts"`));
      return true;
    });
    l2.release();
    assert.equal((await a.allocate('127.0.0.1')).port, l2.port, 'a released port is free again');
  } finally {
    busy.close();
  }
});

test('without a range any free port is used; one allocator per agent configuration', async () => {
  const a = new PortAllocator(null);
  const l = await a.allocate('127.0.0.1');
  assert.ok(l.port > 0);
  const cfg = { migrationPorts: null };
  assert.equal(portAllocatorFor(cfg), portAllocatorFor(cfg));
  assert.notEqual(portAllocatorFor(cfg), portAllocatorFor({ migrationPorts: null }));
});

test('an address that is not this host is a clear error', async () => {
  await assert.rejects(new PortAllocator({ from: 50000, to: 50010 }).allocate('192.0.2.77'), (e: FerryError) => {
    assert.equal(e.code, 'E_MIGRATION_ADDRESS');
    assert.match(e.message, /Cannot listen for migrations on 192\.0\.2\.77: .*set the migration address/);
    return true;
  });
});

test('a destination listening on 0.0.0.0 advertises the address the request came in on', () => {
  assert.equal(advertisedMigrationAddress('10.0.0.5', '10.9.9.9', 'h'), '10.0.0.5', 'an explicit address wins');
  assert.equal(advertisedMigrationAddress('0.0.0.0', '192.168.7.3', 'h'), '192.168.7.3');
  assert.equal(advertisedMigrationAddress('0.0.0.0', '::ffff:192.168.7.3', 'h'), '192.168.7.3');
  assert.equal(advertisedMigrationAddress('::', 'fd00::3', 'h'), 'fd00::3');
  assert.throws(
    () => advertisedMigrationAddress('0.0.0.0', undefined, 'host-b'),
    new RegExp(
      String.raw`Cannot receive a migration on host 'host-b': it listens on 0\.0\.0\.0 ` +
        String.raw`and has no migration address; set "migrationAddress"`,
    ),
  );
});
