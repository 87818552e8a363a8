// migration/kinds/live.ts ownedElsewhere: the source of a move stops its QEMU for a destination's
// E_HA_OWNED_ELSEWHERE only when the cluster's record, read by the source itself, names a third
// node; a destination that says so falsely gets the usual resolution, and without etcd the VM
// stays paused (E_SWITCHOVER).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../src/errors.js';
import { ownedElsewhere } from '../../src/migration/kinds/live.js';
import type { SourceCtx } from '../../src/migration/source.js';

const peerSays = new FerryError('E_HA_OWNED_ELSEWHERE', 'the cluster runs it on host-c', {});

function ctx(mayBoot: () => Promise<void>, ha = true): SourceCtx {
  return {
    host: { cluster: () => ({ mayBoot }) },
    spec: { name: 'w1', ha },
    job: { record: { vm: 'w1', source: 'host-a', destination: 'host-b' } },
  } as unknown as SourceCtx;
}

test('a peer saying the cluster runs the VM elsewhere is believed only when the record says so', async () => {
  // The record names this host (or none): the destination's word is not enough.
  assert.equal(
    await ownedElsewhere(
      ctx(() => Promise.resolve()),
      peerSays,
    ),
    false,
  );
  // Not an HA VM: no record can give it elsewhere.
  assert.equal(
    await ownedElsewhere(
      ctx(() => Promise.reject(peerSays), false),
      peerSays,
    ),
    false,
  );
  // The record, read here, names a third node.
  const third = new FerryError('E_HA_OWNED_ELSEWHERE', 'the cluster runs it on host-c', {});
  assert.equal(
    await ownedElsewhere(
      ctx(() => Promise.reject(third)),
      peerSays,
    ),
    true,
  );
  // etcd does not answer: neither is known, the VM stays paused and the error says so.
  const down = new FerryError('E_CLUSTER_UNAVAILABLE', 'etcd does not answer', {});
  await assert.rejects(
    ownedElsewhere(
      ctx(() => Promise.reject(down)),
      peerSays,
    ),
    (e: unknown) => {
      assert.ok(e instanceof FerryError);
      assert.equal(e.code, 'E_SWITCHOVER');
      assert.match(e.message, /stays paused on 'host-a'/);
      return true;
    },
  );
});
