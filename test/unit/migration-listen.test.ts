// Where a destination listens for a migration when migration networks are set: an address of
// its own inside them, never the agent's other address. A host whose migration link is down
// has no such address (Node lists only interfaces that are up and running), and must refuse
// rather than receive the stream over its management network.
import os from 'node:os';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HostSettings, type HostSettingsDeps } from '../../src/agent/host-settings.js';
import { FerryError } from '../../src/errors.js';
import { inCidr } from '../../src/util/cidr.js';

function settings(networks: string[]): HostSettings {
  // Only the registry's stored settings matter to migrationListenAddress.
  const registry = { getSetting: () => ({ networks }) } as unknown as HostSettingsDeps['registry'];
  return new HostSettings({ name: 'h', domainId: 'd', migrationAddress: '127.0.0.1', registry } as HostSettingsDeps);
}

test('no migration network set: the agent migration address', () => {
  assert.equal(settings([]).migrationListenAddress(), '127.0.0.1');
});

test('an address inside the migration networks', () => {
  assert.equal(settings(['127.0.0.0/8']).migrationListenAddress('127.0.0.9'), '127.0.0.1');
});

test('no address inside the migration networks: refused, no fall-back to the agent address', () => {
  // A documentation network (RFC 5737) no interface here has, as none has a cut link's address.
  const own = Object.values(os.networkInterfaces()).flatMap((l) => (l ?? []).map((x) => x.address));
  const net = ['198.51.100.0/24', '203.0.113.0/24', '192.0.2.0/24'].find((n) => !own.some((a) => inCidr(a, n)));
  assert.ok(net, 'a documentation network is free here');
  assert.throws(
    () => settings([net]).migrationListenAddress(net.replace(/0\/24$/, '7')),
    (e: unknown) => e instanceof FerryError && e.code === 'E_MIGRATION_NETWORK' && e.message.includes(net),
  );
});
