import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { usableCpuModels, usableModelNames, chooseBaseline, clearCpuModelCache } from '../../src/qemu/cpu-models.js';
import { FerryError } from '../../src/errors.js';

/** Pids of the probe QEMUs (their QMP socket lives in a ferry-cpu-models-* folder). */
function probeQemus(): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8');
      if (cmd.includes('qemu-system') && cmd.includes('ferry-cpu-models-')) out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}

test('usableCpuModels(tcg): real query-cpu-definitions, cached, no QEMU left behind', async () => {
  clearCpuModelCache();
  const t0 = Date.now();
  const models = await usableCpuModels('tcg', { timeoutMs: 20_000 });
  const first = Date.now() - t0;
  assert.deepEqual(probeQemus(), [], 'the probe QEMU is gone');

  const by = new Map(models.map((m) => [m.name, m]));
  const qemu64 = by.get('qemu64');
  assert.ok(qemu64, 'qemu64 is listed');
  assert.deepEqual(qemu64.unavailableFeatures, []);
  assert.equal(qemu64.migrationSafe, true);
  assert.equal(qemu64.aliasOf, 'qemu64-v1');

  // What TCG in QEMU 7.2 provides: the pre-SandyBridge generations, not the newer ones.
  for (const name of ['Conroe', 'Penryn', 'Nehalem', 'Westmere', 'kvm64', 'Opteron_G1', 'Opteron_G2']) {
    assert.deepEqual(by.get(name)?.unavailableFeatures, [], `${name} is usable under TCG`);
  }
  const sky = by.get('Skylake-Server');
  assert.ok(
    sky && sky.unavailableFeatures.includes('avx512f'),
    `Skylake-Server lacks avx512f under TCG: ${JSON.stringify(sky)}`,
  );
  const epyc = by.get('EPYC');
  assert.ok(epyc && epyc.unavailableFeatures.length > 0, 'EPYC is not usable under TCG');
  assert.deepEqual(by.get('SandyBridge')?.unavailableFeatures, ['x2apic', 'tsc-deadline']);
  assert.deepEqual(by.get('host')?.unavailableFeatures, ['kvm']);
  assert.equal(by.get('max')?.migrationSafe, false);
  assert.equal(chooseBaseline([usableModelNames(models)]), 'Westmere');

  // Second call: from the cache, no new QEMU, and a copy the caller may change.
  models[0]!.unavailableFeatures.push('bogus');
  const t1 = Date.now();
  const again = await usableCpuModels('tcg');
  assert.ok(Date.now() - t1 < Math.max(50, first), 'cached');
  assert.ok(!again[0]!.unavailableFeatures.includes('bogus'));
  assert.deepEqual(probeQemus(), []);
});

test('usableCpuModels: an aborted wait rejects at once and kills the probe', async () => {
  clearCpuModelCache();
  const ac = new AbortController();
  const p = usableCpuModels('tcg', { signal: ac.signal });
  ac.abort();
  await assert.rejects(p, (e: FerryError) => e.code === 'E_ABORTED');
  // The probe winds down (QEMU killed, temp folder removed) shortly after.
  const until = Date.now() + 5000;
  while (probeQemus().length > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(probeQemus(), []);
  // A later call starts a fresh probe and succeeds.
  const models = await usableCpuModels('tcg');
  assert.ok(models.some((m) => m.name === 'qemu64'));
  assert.deepEqual(probeQemus(), []);
});

test("usableCpuModels(kvm) without a working /dev/kvm fails with QEMU's reason, leaving nothing behind", async (t) => {
  let kvmOk = true;
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    kvmOk = false;
  }
  if (kvmOk) {
    t.skip('/dev/kvm is accessible here');
    return;
  }
  clearCpuModelCache();
  await assert.rejects(usableCpuModels('kvm', { timeoutMs: 10_000 }), (e: FerryError) => {
    assert.equal(e.code, 'E_CPU_MODELS');
    assert.match(
      e.message,
      /^Cannot list the CPU models of QEMU under kvm: QEMU exited at start-up: .+; check \/dev\/kvm/,
    );
    return true;
  });
  assert.deepEqual(probeQemus(), []);
});
