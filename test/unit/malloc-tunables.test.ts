import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QEMU_MALLOC_ENV, qemuEnv } from '../../src/qemu/malloc-tunables.js';

test("QEMU's environment: the agent's, with Ferry's malloc thresholds unless the administrator set them", () => {
  const env = qemuEnv({ PATH: '/usr/bin', GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' });
  assert.equal(env.PATH, '/usr/bin');
  assert.equal(env.GLIBC_TUNABLES, 'glibc.malloc.arena_max=2');
  for (const [k, v] of Object.entries(QEMU_MALLOC_ENV)) assert.equal(env[k], v);
  const own = qemuEnv({ MALLOC_TRIM_THRESHOLD_: '131072' });
  assert.equal(own.MALLOC_TRIM_THRESHOLD_, '131072');
  assert.equal(own.MALLOC_MMAP_THRESHOLD_, QEMU_MALLOC_ENV.MALLOC_MMAP_THRESHOLD_);
});
