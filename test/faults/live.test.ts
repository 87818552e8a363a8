// Fault matrix, live migration with shared storage: every phase × every fault (npm run test:faults).
import { test } from 'node:test';
import { FAULTS, PHASES, notApplicable, runCell, useFaultLab } from './harness.js';

const L = useFaultLab();
const only = process.env.FERRY_FAULTS_ONLY; // e.g. "copying-memory" or "migration-net-cut" to run a slice

for (const phase of PHASES) {
  for (const fault of FAULTS) {
    const na = notApplicable('live', phase, fault);
    const skip = na ?? (only && !`live ${phase} ${fault}`.includes(only) ? `not in FERRY_FAULTS_ONLY=${only}` : null);
    test(`live × ${phase} × ${fault}`, { ...(skip ? { skip } : {}), timeout: 600_000 }, async () => { await runCell(L, 'live', phase, fault); });
  }
}
