// The node lease's timing (src/cluster/membership.ts, store.ts): the self-fence deadline stays
// a whole margin below the lease's expiry for every TTL an agent may be configured with, and a
// healthy holder gets several renewals in before that deadline (one slow or lost keepalive, or
// a Raft election of 1–2 s, must not fence it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FENCE_MARGIN_MS, NODE_TTL_S, fenceAfterMs } from '../../src/cluster/membership.js';
import { keepalivePeriodMs } from '../../src/cluster/store.js';

test('the self-fence deadline is FENCE_MARGIN_MS below the lease expiry for every allowed TTL (2–60 s)', () => {
  // The margin must hold both checks' periods (the agent's watchdog, the fence's poll: 100 ms
  // each), the SIGKILL and wait, and 0.1 % clock-rate error over the lease.
  assert.ok(FENCE_MARGIN_MS >= 100 + 100 + 100 + 60);
  for (let ttl = 2; ttl <= 60; ttl++) {
    assert.ok(fenceAfterMs(ttl) > 0, `${ttl} s`);
    assert.ok(fenceAfterMs(ttl) + FENCE_MARGIN_MS <= ttl * 1000, `${ttl} s`);
  }
  assert.equal(fenceAfterMs(NODE_TTL_S), 3000);
});

test('a holder renews at least twice before its fence deadline (six times with the default lease)', () => {
  for (let ttl = 2; ttl <= 60; ttl++) assert.ok(fenceAfterMs(ttl) / keepalivePeriodMs(ttl * 1000) >= 2, `${ttl} s`);
  assert.equal(keepalivePeriodMs(NODE_TTL_S * 1000), 500);
  assert.equal(fenceAfterMs(NODE_TTL_S) / keepalivePeriodMs(NODE_TTL_S * 1000), 6);
});
