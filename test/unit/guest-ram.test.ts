import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dataPages, guestRamInUse, guestRamMapping, samplePlan } from '../../src/qemu/guest-ram.js';

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
  assert.deepEqual(guestRamMapping(SMAPS, 256), { start: 0x7f7963e00000, rssBytes: 151552 * 1024 });
  // No mapping of that size (another layout): nothing is claimed.
  assert.equal(guestRamMapping(SMAPS, 512), null);
  // A read-only mapping of the right size is not guest RAM.
  const readOnly = SMAPS.replace('7f7963e00000-7f7973e00000 rw-p', '7f7963e00000-7f7973e00000 r--p');
  assert.equal(guestRamMapping(readOnly, 256), null);
});

test('the sample reads one run in each equal slice of memory, never past its end', () => {
  const pages = 65536;
  for (const random of [() => 0, () => 0.999999, Math.random]) {
    const starts = samplePlan(pages, 256, 8, random);
    assert.equal(starts.length, 256);
    starts.forEach((s, i) => {
      assert.ok(s >= (i * pages) / 256 && s + 8 <= ((i + 1) * pages) / 256, `run ${i} at ${s}`);
    });
  }
  // Less memory than the plan: fewer runs, still inside it.
  const small = samplePlan(20, 256, 8, () => 0.999999);
  assert.equal(small.length, 2);
  assert.ok(
    small.every((s) => s >= 0 && s + 8 <= 20),
    JSON.stringify(small),
  );
});

test('a page with any byte set holds data; an all-zero page does not; a partial page is not counted', () => {
  const buf = Buffer.alloc(4 * 4096);
  buf[4096 + 4095] = 1; // the second page's last byte
  buf[3 * 4096] = 7; // the fourth page's first byte
  assert.equal(dataPages(buf, buf.length), 2);
  assert.equal(dataPages(buf, 3 * 4096 + 100), 1);
  assert.equal(dataPages(Buffer.alloc(4096), 4096), 0);
});

test('a process that is gone gives no figure, nor does a memory map without the guest RAM', async () => {
  assert.equal(await guestRamInUse(2 ** 22 + 12345, 256), null);
  // This test's own process: a Node, whose memory map has no read-write mapping of exactly 3 GiB + 1 MiB.
  assert.equal(await guestRamInUse(process.pid, 3073), null);
});
