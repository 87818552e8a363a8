// Fault matrix, live migration with shared storage: every phase × every fault (npm run test:faults).
import { test } from 'node:test';
import { matrixTests } from './harness.js';

matrixTests('live', test);
