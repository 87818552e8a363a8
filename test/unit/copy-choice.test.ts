// `--resumable auto|always|never` (backup-copy.ts chooseCopy): which way a running VM's disks copy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseCopy, RESUMABLE_MIN_BYTES } from '../../src/migration/kinds/backup-copy.js';

const GiB = 1024 ** 3;
const disk = (id: string, allocatedBytes: number, format = 'qcow2') => ({ id, format, allocatedBytes });

test('auto: resumable from 1 GiB allocated across the disks, the mirror below', () => {
  assert.equal(RESUMABLE_MIN_BYTES, GiB);
  const small = chooseCopy('auto', [disk('disk0', 600 * 1024 ** 2), disk('disk1', 300 * 1024 ** 2, 'raw')], false);
  assert.deepEqual(small, { resumable: false, why: 'the disks hold 0.88 GiB, under 1.00 GiB (--resumable auto)' });
  const big = chooseCopy('auto', [disk('disk0', 700 * 1024 ** 2), disk('disk1', 324 * 1024 ** 2, 'raw')], false);
  assert.deepEqual(big, { resumable: true, why: 'the disks hold 1.00 GiB, at least 1.00 GiB' });
});

test('always and never win over the size; always still needs qcow2 or raw and no chain', () => {
  assert.equal(chooseCopy('always', [disk('disk0', 1)], false).resumable, true);
  assert.deepEqual(chooseCopy('never', [disk('disk0', 8 * GiB)], false), {
    resumable: false,
    why: '--resumable never',
  });
  assert.deepEqual(chooseCopy('always', [disk('disk0', 1), disk('disk1', 1, 'vhdx')], false), {
    resumable: false,
    why: "disk 'disk1' is vhdx (only qcow2 and raw resume)",
  });
  assert.deepEqual(chooseCopy('auto', [disk('disk0', 8 * GiB)], true), {
    resumable: false,
    why: 'it sits on a checkpoint chain',
  });
});
