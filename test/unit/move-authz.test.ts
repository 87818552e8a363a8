// Who may ask this host to move one of its VMs (src/agent/move-authz.ts), before any etcd read:
// a host certificate is refused for good by a host in no cluster, and for now (E_CLUSTER_JOINING,
// the leader asks again) by a member still rejoining after its agent restarted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { authorizedDestination } from '../../src/agent/move-authz.js';
import type { ClusterNode } from '../../src/cluster/node.js';
import type { FerryError } from '../../src/errors.js';
import type { PeerIdentity } from '../../src/domain/ca.js';

const to = { name: 'host-a', endpoint: 'https://10.0.0.1:7443' };
const node = (membership: object | null): ClusterNode => ({ joined: false, membership }) as unknown as ClusterNode;
const host: PeerIdentity = { name: 'host-b', role: 'host', domainId: 'd1' };
const admin: PeerIdentity = { name: 'admin', role: 'admin', domainId: 'd1' };
const what = "move VM 'w1' to host 'host-a'";

test('authorizedDestination: an administrator, a host in no cluster, a member still joining', async () => {
  assert.deepEqual(await authorizedDestination(node(null), admin, to, what, { leaderOnly: true }), to);
  await assert.rejects(
    authorizedDestination(node(null), host, to, what, { leaderOnly: true }),
    (e: FerryError) => e.code === 'E_FORBIDDEN' && /in no cluster/.test(e.message),
  );
  await assert.rejects(
    authorizedDestination(node({}), host, to, what, { leaderOnly: true }),
    (e: FerryError) => e.code === 'E_CLUSTER_JOINING' && /still joining its cluster; ask again/.test(e.message),
  );
});
