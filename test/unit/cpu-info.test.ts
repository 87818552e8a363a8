import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { CPU_INFO_TTL_MS, cpuInfo, parseCpuInfo } from '../../src/agent/capabilities.js';

const TWO = `processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu vme sse2 avx512f

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu vme sse2 avx512f
`;

test('parseCpuInfo: the first processor, and how many are listed', () => {
  assert.deepEqual(parseCpuInfo(TWO), {
    vendor: 'GenuineIntel',
    model: 'Intel(R) Xeon(R) Platinum 8480C',
    flags: ['fpu', 'vme', 'sse2', 'avx512f'],
    count: 2,
  });
  const none = parseCpuInfo('');
  assert.deepEqual([none.vendor, none.model, none.flags], ['unknown', 'unknown', []]);
  assert.ok(none.count >= 1, 'without /proc/cpuinfo the count comes from the system');
});

test("cpuInfo: this host's reading, kept for a while, and a copy each time", async () => {
  const t = Date.now();
  const a = await cpuInfo(t);
  const expected = parseCpuInfo(fs.readFileSync('/proc/cpuinfo', 'utf8'));
  assert.deepEqual(a, expected);
  a.flags.push('changed-by-a-caller');
  const b = await cpuInfo(t + CPU_INFO_TTL_MS - 1);
  assert.deepEqual(b, expected, "a caller's change does not reach the next caller");
  assert.notEqual(a.flags, b.flags);
  assert.deepEqual(await cpuInfo(t + CPU_INFO_TTL_MS), expected, 'read again after the TTL');
});

test('cpuInfo: a failed read is answered but not kept', async () => {
  const t = Date.now() + 10 * CPU_INFO_TTL_MS; // past any reading an earlier test kept
  const failed = await cpuInfo(t, () => Promise.reject(new Error('EMFILE')));
  assert.deepEqual([failed.vendor, failed.flags], ['unknown', []]);
  let reads = 0;
  const again = await cpuInfo(t + 1, () => {
    reads++;
    return Promise.resolve(TWO);
  });
  assert.equal(reads, 1, 'read again at once');
  assert.equal(again.vendor, 'GenuineIntel');
  assert.equal((await cpuInfo(t + 2, () => Promise.reject(new Error('not read')))).count, 2, 'then kept');
});
