import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createVm, startVm } from '../../src/vm/lifecycle.js';
import { bootblockVm } from '../../src/vm/guests.js';
import { QEMU_MALLOC_ENV, qemuEnv } from '../../src/qemu/malloc-tunables.js';
import { tempDir, testAccel, testPools } from '../helpers.js';

// Read from the running process: what reaches QEMU (as root, through setpriv: a glibc program
// between the agent and QEMU). An administrator's own values in the environment are expected.
test("a VM's QEMU runs with Ferry's malloc thresholds (its I/O buffers kept in the heap)", async (t) => {
  const dir = await tempDir(t);
  const g = bootblockVm({ name: 'malloc-vm', configPath: path.join(dir, 'vm') });
  const spec = await createVm(g.spec, g.create);
  const proc = await startVm(spec, { runDir: path.join(dir, 'run'), accel: await testAccel(), pools: testPools(dir) });
  t.after(() => proc.kill());
  const env = fs.readFileSync(`/proc/${proc.pid}/environ`, 'utf8').split('\0');
  const want = qemuEnv(process.env);
  for (const k of Object.keys(QEMU_MALLOC_ENV)) {
    const line = `${k}=${want[k] ?? ''}`;
    assert.ok(env.includes(line), `${line} in QEMU's environment`);
  }
});
