import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { createVm, startVm, stopVm, runtimePaths } from '../../src/vm/lifecycle.js';
import { bootblockVm } from '../../src/vm/guests.js';
import {
  verifyGuestMemory,
  checkPattern,
  patternEndFor,
  PATTERN_START,
  PATTERN_END,
  PAGE,
} from '../../guest/bootblock.js';
import { sleep } from '../../src/util/exec.js';
import { tempDir, testAccel, waitForFile, testPools } from '../helpers.js';

test('bootblock guest: memory pattern verifies on a running guest, a corrupted dump fails', async (t) => {
  const dir = await tempDir(t);
  const g = bootblockVm({ name: 'bb', configPath: path.join(dir, 'bb') });
  const spec = await createVm(g.spec, g.create);
  const runDir = path.join(dir, 'run');
  const proc = await startVm(spec, { runDir, accel: await testAccel(), pools: testPools(dir) });
  t.after(() => proc.kill());
  const serial = runtimePaths(runDir).serialLog;
  await waitForFile(serial, (s) => s.startsWith('A') && s.includes('B'), {
    timeoutMs: 30_000,
    what: "the guest's A and B",
  });

  const report = await verifyGuestMemory(proc.qmp, path.join(dir, 'dump.bin'));
  assert.equal(report.ok, true, `bad pages: ${report.badPages.slice(0, 5).join(',')}`);
  assert.equal(report.pages, (PATTERN_END - PATTERN_START) / PAGE);

  // The same check on a real dump with one page changed must fail and name the page.
  await proc.qmp.execute('stop');
  const dumpFile = path.join(dir, 'dump2.bin');
  await proc.qmp.execute('pmemsave', { val: PATTERN_START, size: PATTERN_END - PATTERN_START, filename: dumpFile });
  const dump = await fsp.readFile(dumpFile);
  assert.equal(checkPattern(dump).ok, true);
  const page = 5000;
  dump[page * PAGE] = (dump[page * PAGE]! + 7) & 0xff;
  const bad = checkPattern(dump);
  assert.equal(bad.ok, false);
  assert.ok(
    bad.badPages.includes(page) || bad.badPages.includes(page + 1),
    `page ${page} reported: ${bad.badPages.join(',')}`,
  );

  await proc.qmp.execute('cont');
  const stopped = await stopVm(proc, { force: true });
  assert.equal(stopped.graceful, false);
});

test('a 24 MiB bootblock guest sweeps [1 MiB, 22 MiB) only, and its check follows its size', async (t) => {
  const dir = await tempDir(t);
  const g = bootblockVm({ name: 'bbs', configPath: path.join(dir, 'bbs'), memoryMiB: 24 });
  assert.equal(g.spec.memoryMiB, 24, 'the memory asked for is the memory given');
  const spec = await createVm(g.spec, g.create);
  const runDir = path.join(dir, 'run');
  const proc = await startVm(spec, { runDir, accel: await testAccel(), pools: testPools(dir) });
  t.after(() => proc.kill());
  await waitForFile(runtimePaths(runDir).serialLog, (s) => s.startsWith('A') && s.includes('B'), {
    timeoutMs: 30_000,
    what: "the guest's A and B",
  });
  const end = patternEndFor(24);
  assert.equal(end, 22 << 20);
  const report = await verifyGuestMemory(proc.qmp, path.join(dir, 'dump.bin'));
  assert.equal(report.ok, true, `bad pages: ${report.badPages.slice(0, 5).join(',')}`);
  assert.equal(report.pages, (end - PATTERN_START) / PAGE);
  assert.notEqual(report.value, 0, 'the sweep ran');
  // Above the pattern nothing is swept: the first byte of each page there stays as the BIOS left it.
  await proc.qmp.execute('stop');
  const above = path.join(dir, 'above.bin');
  await proc.qmp.execute('pmemsave', { val: end, size: 1 << 20, filename: above });
  const first = await fsp.readFile(above);
  await proc.qmp.execute('cont');
  await sleep(300);
  await proc.qmp.execute('stop');
  await proc.qmp.execute('pmemsave', { val: end, size: 1 << 20, filename: above });
  assert.deepEqual(await fsp.readFile(above), first, 'RAM above the pattern did not change while the guest ran');
  await stopVm(proc, { force: true });
});
