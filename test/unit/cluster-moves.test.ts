import { test } from 'node:test';
import assert from 'node:assert/strict';
import { arrivingSpec, decideArrival, haOnArrival, type ArrivalFacts } from '../../src/migration/arrival.js';
import { assertHaStorage, firstUnshared, haFiles } from '../../src/cluster/ha-storage.js';
import type { MoveCluster } from '../../src/migration/host.js';
import type { PoolDef } from '../../src/storage/pools.js';
import { parseVmSpec, type VmSpec } from '../../src/vm/spec.js';
import { FerryError } from '../../src/errors.js';

const facts = (f: Partial<ArrivalFacts>): ArrivalFacts => ({
  vm: 'web1',
  ha: true,
  source: 'host-a',
  cluster: 'prod',
  sourceIsMember: true,
  ...f,
});

test('arrival: a move between nodes of one cluster keeps an HA VM HA', () => {
  assert.deepEqual(haOnArrival(facts({})), { ha: true, note: null });
});

test('arrival: leaving for a host in no cluster clears HA and says so', () => {
  const d = haOnArrival(facts({ cluster: null, sourceIsMember: false }));
  assert.equal(d.ha, false);
  assert.match(d.note ?? '', /web1 arrives not HA \(ha: false\)/);
});

test('arrival: from another cluster (or a standalone host) the VM is not made HA; the note names add-vm', () => {
  const d = haOnArrival(facts({ source: 'other-1', sourceIsMember: false }));
  assert.equal(d.ha, false);
  assert.match(d.note ?? '', /outside cluster 'prod'/);
  assert.match(d.note ?? '', /ferry cluster add-vm web1/);
});

test('arrival: a VM that is not HA stays so, silently', () => {
  for (const f of [
    facts({ ha: false }),
    facts({ ha: false, cluster: null }),
    facts({ ha: false, sourceIsMember: false }),
  ])
    assert.deepEqual(haOnArrival(f), { ha: false, note: null });
});

const spec = (over: Record<string, unknown> = {}): VmSpec =>
  parseVmSpec(
    {
      version: 1,
      name: 'web1',
      id: '6f1c2a4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f',
      memoryMiB: 128,
      cpus: 1,
      configPath: '/shared/web1',
      checkpointPath: '/shared/web1/checkpoints',
      pagingPath: '/shared/web1',
      disks: [{ id: 'disk0', path: '/shared/web1/disk0.qcow2', format: 'qcow2' }],
      boot: { kind: 'disk' },
      ha: true,
      cluster: { priority: 'high', preferredOwners: [], antiAffinity: [] },
      ...over,
    },
    'test',
  );

test('arrivingSpec: clearing HA drops the cluster policy and leaves the rest; keeping returns it as is', () => {
  const s = spec();
  const cleared = arrivingSpec(s, { ha: false, note: 'x' });
  assert.equal(cleared.ha, false);
  assert.equal(cleared.cluster, undefined);
  assert.deepEqual({ ...cleared, ha: true, cluster: s.cluster }, s);
  assert.equal(s.ha, true, 'the input is not changed');
  assert.equal(arrivingSpec(s, { ha: true, note: null }), s);
});

const cluster = (members: string[], fail = false): MoveCluster =>
  ({
    name: 'prod',
    isMember: (n: string) => (fail ? Promise.reject(new Error('etcd down')) : Promise.resolve(members.includes(n))),
  }) as unknown as MoveCluster;

test("decideArrival: asks this host's cluster whether the source is a member", async () => {
  assert.equal((await decideArrival(cluster(['host-a', 'host-b']), spec(), 'host-a')).ha, true);
  assert.equal((await decideArrival(cluster(['host-b']), spec(), 'host-a')).ha, false);
  assert.equal((await decideArrival(null, spec(), 'host-a')).ha, false);
  // etcd does not answer: nothing is decided on a guess, the VM keeps its flag.
  assert.equal((await decideArrival(cluster([], true), spec(), 'host-a')).ha, true);
});

const pools: PoolDef[] = [
  { name: 'local', kind: 'local', path: '/var/lib/ferry/local' },
  { name: 'shared', kind: 'shared', path: '/shared' },
];

test('HA storage: every disk and the folder must be in a shared pool', () => {
  assert.equal(firstUnshared(haFiles(spec()), pools), null);
  const local = haFiles({
    disks: [{ id: 'disk0', path: '/var/lib/ferry/local/web1/disk0.qcow2' }],
    configPath: '/shared/web1',
  });
  assert.deepEqual(firstUnshared(local, pools)?.where, "in local pool 'local'");
  const nowhere = haFiles({ disks: [], configPath: '/elsewhere/web1' });
  assert.deepEqual(firstUnshared(nowhere, pools), {
    file: { what: 'its folder', path: '/elsewhere/web1' },
    where: 'in no pool',
  });
});

test('HA storage: the refusal has a stable code, the file, and the fix', () => {
  const files = haFiles({ disks: [{ id: 'disk0', path: '/var/lib/ferry/local/w/d.qcow2' }], configPath: '/shared/w' });
  assert.throws(
    () => assertHaStorage(files, pools, "create HA VM 'w'", 'put it on a shared pool', 'w'),
    (err: unknown) =>
      err instanceof FerryError &&
      err.code === 'E_STORAGE_NOT_SHARED' &&
      /^Cannot create HA VM 'w': disk disk0 \(\/var\/lib\/ferry\/local\/w\/d\.qcow2\) is in local pool 'local'.*; put it on a shared pool$/.test(
        err.message,
      ),
  );
});
