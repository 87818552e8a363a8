// Fault matrix, shared-nothing live migration: every phase × every fault (npm run test:faults).
import { test } from 'node:test';
import { matrixTests } from './harness.js';

matrixTests('shared-nothing', test);
