import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createVm, startVm } from '../../src/vm/lifecycle.js';
import { bootblockVm } from '../../src/vm/guests.js';
import { QEMU_MALLOC_ENV } from '../../src/qemu/malloc-tunables.js';
import { tempDir, testAccel, testPools } from '../helpers.js';

// Read from the running process: what reaches QEMU through nice, setpriv or systemd-run.
test("a VM's QEMU runs with Ferry's malloc thresholds (its I/O buffers kept in the heap)", async (t) => {
  const dir = await tempDir(t);
  const g = bootblockVm({ name: 'malloc-vm', configPath: path.join(dir, 'vm') });
  const spec = await createVm(g.spec, g.create);
  const proc = await startVm(spec, { runDir: path.join(dir, 'run'), accel: await testAccel(), pools: testPools(dir) });
  t.after(() => proc.kill());
  const env = fs.readFileSync(`/proc/${proc.pid}/environ`, 'utf8').split('\0');
  for (const [k, v] of Object.entries(QEMU_MALLOC_ENV))
    assert.ok(env.includes(`${k}=${v}`), `${k}=${v} in QEMU's environment`);
});
