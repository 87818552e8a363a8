// The vCPU reading a test shows for a silent probe guest (test/e2e/silent-guest.ts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cpuOf } from '../e2e/silent-guest.js';

test('cpuOf reads RIP and HLT of a 64-bit vCPU and EIP of a 32-bit one', () => {
  const long =
    'RAX=0000000000000000 RBX=ffffffff82613940 RCX=0000000000000001 RDX=000000000001d8a6\n' +
    'RIP=ffffffff81ca1f0b RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n' +
    'ES =0000 0000000000000000 00000000 00000000\n';
  assert.deepEqual(cpuOf(long), { rip: 'ffffffff81ca1f0b', halted: true });
  const flat =
    'EAX=00000000 EBX=00000000 ECX=00000000 EDX=00000663\n' +
    'EIP=00007c2e EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n';
  assert.deepEqual(cpuOf(flat), { rip: '00007c2e', halted: false });
  assert.equal(cpuOf('CPU#0: not available\n'), null);
});
