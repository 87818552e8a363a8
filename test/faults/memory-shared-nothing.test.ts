// Fault matrix, memory pattern: the bootblock guest (it rewrites 99 MiB continuously) moved
// shared-nothing and interrupted where memory is in flight; its pattern is checked on the host it ends
// on and again after the retry (npm run test:faults).
import { test } from 'node:test';
import { matrixTests } from './harness.js';

matrixTests('shared-nothing', test, {
  guest: 'bootblock',
  phases: ['copying-memory', 'switching-over'],
  faults: ['dest-agent-killed', 'source-agent-killed', 'migration-net-cut'],
});
