// `--resumable auto|always|never` (copy-choice.ts): which way a move copies its disks, decided
// once when the move is planned (plan.ts) and read by the prepare, mirror and backup steps.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseCopy, moveCopy, RESUMABLE_MIN_BYTES } from '../../src/migration/copy-choice.js';
import { backupCopy } from '../../src/migration/kinds/backup-copy.js';
import { mirrorStep } from '../../src/migration/kinds/live.js';
import type { SourceCtx } from '../../src/migration/source.js';

const GiB = 1024 ** 3;
const disk = (id: string, allocatedBytes: number, format = 'qcow2') => ({
  id,
  format,
  allocatedBytes,
  readOnly: false,
});

test('auto: resumable from 1 GiB allocated across the disks, the mirror below', () => {
  assert.equal(RESUMABLE_MIN_BYTES, GiB);
  const small = chooseCopy('auto', [disk('disk0', 600 * 1024 ** 2), disk('disk1', 300 * 1024 ** 2, 'raw')], false);
  assert.deepEqual(small, { method: 'mirror', why: 'the disks hold 0.88 GiB, under 1.00 GiB (--resumable auto)' });
  const big = chooseCopy('auto', [disk('disk0', 700 * 1024 ** 2), disk('disk1', 324 * 1024 ** 2, 'raw')], false);
  assert.deepEqual(big, { method: 'resumable', why: 'the disks hold 1.00 GiB, at least 1.00 GiB' });
});

test('always and never win over the size; always still needs qcow2 or raw and no chain', () => {
  assert.equal(chooseCopy('always', [disk('disk0', 1)], false).method, 'resumable');
  assert.deepEqual(chooseCopy('never', [disk('disk0', 8 * GiB)], false), {
    method: 'mirror',
    why: '--resumable never',
  });
  assert.deepEqual(chooseCopy('always', [disk('disk0', 1), disk('disk1', 1, 'vhdx')], false), {
    method: 'mirror',
    why: "disk 'disk1' is vhdx (only qcow2 and raw resume)",
  });
  assert.deepEqual(chooseCopy('auto', [disk('disk0', 8 * GiB)], true), {
    method: 'mirror',
    why: 'it sits on a checkpoint chain',
  });
});

test("a move's copy: a running VM's by chooseCopy; absent is auto", () => {
  assert.equal(moveCopy(true, undefined, [disk('disk0', 8 * GiB)], false).method, 'resumable');
  assert.equal(moveCopy(true, undefined, [disk('disk0', 1)], false).method, 'mirror');
});

test("a stopped VM's move resumes as a running one's, qcow2 only (the image stores the bitmap)", () => {
  const sn = (mode: 'auto' | 'always' | 'never' | undefined, disks: ReturnType<typeof disk>[], onChain = false) =>
    moveCopy(false, mode, disks, onChain);
  assert.deepEqual(sn(undefined, [disk('disk0', 8 * GiB)]), {
    method: 'resumable',
    why: "the disks hold 8.00 GiB, at least 1.00 GiB; a disk daemon reads the stopped VM's disks",
  });
  assert.equal(sn('always', [disk('disk0', 1)]).method, 'resumable');
  assert.deepEqual(sn(undefined, [disk('disk0', 1)]), {
    method: 'offline',
    why: 'the VM is stopped (qemu-img copies its disks: the disks hold 0.00 GiB, under 1.00 GiB (--resumable auto))',
  });
  assert.deepEqual(sn('never', [disk('disk0', 8 * GiB)]), {
    method: 'offline',
    why: 'the VM is stopped (qemu-img copies its disks: --resumable never)',
  });
  assert.deepEqual(sn('always', [disk('disk0', 1), disk('disk1', 1, 'raw')]), {
    method: 'offline',
    why: "the VM is stopped (qemu-img copies its disks: disk 'disk1' is raw, only qcow2 stores the bitmap)",
  });
  assert.equal(sn('always', [disk('disk0', 1)], true).method, 'offline');
  assert.deepEqual(sn('always', [disk('disk0', 1), { ...disk('disk1', 1), readOnly: true }]), {
    method: 'offline',
    why: "the VM is stopped (qemu-img copies its disks: disk 'disk1' is read-only, so its bitmap cannot be stored)",
  });
  // A running VM's bitmap lives in its QEMU: a read-only disk resumes while that QEMU runs.
  assert.equal(moveCopy(true, 'always', [{ ...disk('disk0', 1), readOnly: true }], false).method, 'resumable');
});

test('the steps read the choice the plan holds: it is not computed again', () => {
  // A plan whose disks would say "mirror" by size but whose recorded choice is resumable: the
  // steps follow the record, so a choice made once cannot differ between prepare and the copy.
  const ctx = (method: 'mirror' | 'resumable' | 'offline', running = true): SourceCtx =>
    ({
      proc: running ? {} : null,
      plan: {
        request: { disks: [{ id: 'disk0', format: 'qcow2', allocatedBytes: 1 }] },
        chain: null,
        copy: { method, why: 'test' },
      },
      job: { record: { options: { resumable: 'auto' } } },
    }) as unknown as SourceCtx;
  const when = (c: SourceCtx): boolean | undefined => mirrorStep.when && mirrorStep.when(c);
  assert.equal(backupCopy(ctx('resumable')), true);
  assert.equal(when(ctx('resumable')), false);
  assert.equal(backupCopy(ctx('mirror')), false);
  assert.equal(when(ctx('mirror')), true);
  assert.equal(backupCopy(ctx('offline', false)), false);
  assert.equal(when(ctx('offline', false)), false);
  // A stopped VM's resumable copy runs once its daemon has the disks open (stopped-copy.ts).
  const stopped = ctx('resumable', false);
  assert.equal(backupCopy(stopped), false);
  assert.equal(backupCopy({ ...stopped, daemon: {} } as unknown as SourceCtx), true);
  assert.equal(when({ ...stopped, daemon: {} } as unknown as SourceCtx), false);
});
