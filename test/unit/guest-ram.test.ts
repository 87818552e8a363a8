import { test } from 'node:test';
import assert from 'node:assert/strict';
import { guestRamResident, guestRamRss } from '../../src/qemu/guest-ram.js';

// Trimmed from a QEMU 7.2 (TCG) of a 256 MiB guest: its RAM, the 1 GiB TCG code buffer, a heap.
const SMAPS = `55d4c0000000-55d4c0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  60 kB
7f7963e00000-7f7973e00000 rw-p 00000000 00:00 0 
Size:             262144 kB
KernelPageSize:        4 kB
Rss:              151552 kB
Pss:              151552 kB
7f797c000000-7f79bbfff000 rwxp 00000000 00:00 0 
Size:            1048572 kB
Rss:                4096 kB
7f79c0000000-7f79d0000000 r--p 00000000 08:01 1234                       /usr/share/qemu/some.rom
Size:             262144 kB
Rss:              262144 kB
`;

test("the guest's RAM is the read-write mapping of exactly its memory's size", () => {
  assert.equal(guestRamRss(SMAPS, 256), 151552 * 1024);
  // No mapping of that size (another layout): nothing is claimed.
  assert.equal(guestRamRss(SMAPS, 512), null);
  // A read-only mapping of the right size is not guest RAM.
  const readOnly = SMAPS.replace('7f7963e00000-7f7973e00000 rw-p', '7f7963e00000-7f7973e00000 r--p');
  assert.equal(guestRamRss(readOnly, 256), null);
});

test('a process that is gone gives no figure, nor does a memory map without the guest RAM', async () => {
  assert.equal(await guestRamResident(2 ** 22 + 12345, 256), null);
  // This test's own process: a Node, whose memory map has no read-write mapping of exactly 3 GiB + 1 MiB.
  assert.equal(await guestRamResident(process.pid, 3073), null);
});
