// Fault matrix, storage migration (same host): every phase × every fault (npm run test:faults).
import { test } from 'node:test';
import { matrixTests } from './harness.js';

matrixTests('storage', test);
