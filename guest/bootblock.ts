// The 512-byte memory-pattern guest (the method of QEMU's own migration test, see
// shared/QEMU-NOTES.md §D), assembled here byte by byte so no assembler is needed.
//
// It enters 32-bit protected mode with a flat GDT, writes 'A' to COM1, then sweeps forever
// incrementing the first byte of every 4 KiB page in [1 MiB, end), writing 'B' every 256
// sweeps; `end` is 100 MiB in a guest of 128 MiB or more, else 2 MiB below its RAM's top (a
// smaller guest dirties less, so a move converges at a short downtime also on a busy host).
// After a move, every page must hold the same byte except at most one step where it is
// exactly one lower (where the sweep was when the guest stopped).
import fsp from 'node:fs/promises';
import type { QmpClient } from '../src/qemu/qmp.js';

export const PATTERN_START = 1 << 20;
export const PATTERN_END = 100 << 20;
export const PAGE = 4096;
/** The default guest RAM (the whole 99 MiB pattern fits). */
export const BOOTBLOCK_DEFAULT_MEMORY_MIB = 128;
/** The smallest guest RAM: a pattern of at least 5 MiB. */
export const BOOTBLOCK_MIN_MEMORY_MIB = 8;

/** Where the pattern ends in a guest of `memoryMiB` (the top 2 MiB are left alone). */
export function patternEndFor(memoryMiB: number): number {
  if (memoryMiB < BOOTBLOCK_MIN_MEMORY_MIB) throw new RangeError(`bootblock: ${memoryMiB} MiB is below the minimum`);
  return Math.min(PATTERN_END, (memoryMiB - 2) << 20);
}

const ORG = 0x7c00;

export function bootblockBytes(patternEnd: number = PATTERN_END): Buffer {
  const b = Buffer.alloc(512, 0);
  let pc = 0;
  const emit = (...bytes: number[]): void => {
    for (const x of bytes) b[pc++] = x & 0xff;
  };
  const u16 = (v: number): number[] => [v & 0xff, (v >> 8) & 0xff];
  const u32 = (v: number): number[] => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
  const rel8 = (target: number): number => {
    const d = target - (pc + 1);
    if (d < -128 || d > 127) throw new Error('bootblock: short jump out of range');
    return d;
  };

  const GDT = 0x60; // offsets inside the sector
  const GDTDESC = GDT + 24;
  const PM = 0x20;

  // 16-bit real mode at 0x7c00
  emit(0xfa); // cli
  emit(0x0f, 0x01, 0x16, ...u16(ORG + GDTDESC)); // lgdt [gdtdesc]
  emit(0x66, 0xb8, ...u32(1)); // mov eax, 1
  emit(0x0f, 0x22, 0xc0); // mov cr0, eax  (protected mode on)
  emit(0x66, 0xea, ...u32(ORG + PM), ...u16(8)); // ljmp 0x08:pm (32-bit offset)

  // 32-bit protected mode
  pc = PM;
  emit(0xe4, 0x92, 0x0c, 0x02, 0xe6, 0x92); // in al,0x92; or al,2; out 0x92,al  (A20 on)
  emit(0xb8, ...u32(16)); // mov eax, 16 (data selector)
  emit(0x8e, 0xd8); // mov ds, eax
  emit(0xb0, 0x41); // mov al, 'A'
  emit(0x66, 0xba, ...u16(0x3f8)); // mov dx, COM1
  emit(0xee); // out dx, al
  emit(0xb3, 0x00); // mov bl, 0 (sweep counter)
  const mainloop = pc;
  emit(0xb8, ...u32(PATTERN_START)); // mov eax, 1 MiB
  const inner = pc;
  emit(0xfe, 0x00); // inc byte [eax]
  emit(0x05, ...u32(PAGE)); // add eax, 4096
  emit(0x3d, ...u32(patternEnd)); // cmp eax, end
  emit(0x7c);
  emit(rel8(inner)); // jl inner
  emit(0xfe, 0xc3); // inc bl
  emit(0x75);
  emit(rel8(mainloop)); // jnz mainloop
  emit(0xb0, 0x42); // mov al, 'B'
  emit(0x66, 0xba, ...u16(0x3f8)); // mov dx, COM1
  emit(0xee); // out dx, al
  emit(0xeb);
  emit(rel8(mainloop)); // jmp mainloop
  if (pc > GDT) throw new Error('bootblock: code overlaps the GDT');

  // Flat GDT: null, code (base 0, limit 4 GiB, exec/read), data (read/write)
  pc = GDT;
  emit(0, 0, 0, 0, 0, 0, 0, 0);
  emit(0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00);
  emit(0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00);
  pc = GDTDESC;
  emit(...u16(23), ...u32(ORG + GDT));
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

/** Writes the boot sector as a raw disk image (padded to 1 MiB so every format accepts it). */
export async function writeBootblockImage(file: string): Promise<void> {
  const img = Buffer.alloc(1 << 20, 0);
  bootblockBytes().copy(img, 0);
  await fsp.writeFile(file, img);
}

export interface PatternReport {
  ok: boolean;
  pages: number;
  /** Where the sweep was interrupted (page index), if seen. */
  edgeAt: number | null;
  badPages: number[];
  /** The value most pages hold: how many sweeps have run, mod 256. */
  value: number;
}

/** Checks a dump of guest memory [1 MiB, end): the QEMU migration-test rule. */
export function checkPattern(dump: Buffer): PatternReport {
  const pages = Math.floor(dump.length / PAGE);
  const badPages: number[] = [];
  let edgeAt: number | null = null;
  let last = dump[0] ?? 0;
  for (let i = 1; i < pages; i++) {
    const v = dump[i * PAGE] ?? 0;
    if (v !== last) {
      if (((v + 1) & 0xff) === last && edgeAt === null) edgeAt = i;
      else if (badPages.length < 1000) badPages.push(i);
    }
    last = v;
  }
  return { ok: badPages.length === 0 && pages > 0, pages, edgeAt, badPages, value: dump[0] ?? 0 };
}

/**
 * Stops the guest, dumps the pattern range with pmemsave and checks it. The guest is left
 * stopped when `resume` is false (the caller decides). The range follows the guest's RAM size.
 */
export async function verifyGuestMemory(
  qmp: QmpClient,
  dumpFile: string,
  opts: { signal?: AbortSignal; resume?: boolean } = {},
): Promise<PatternReport> {
  const mem = await qmp.execute('query-memory-size-summary', undefined, { signal: opts.signal });
  const end = patternEndFor(Math.floor(mem['base-memory'] / (1 << 20)));
  const st = await qmp.execute('query-status', undefined, { signal: opts.signal });
  if (st.running) await qmp.execute('stop', undefined, { signal: opts.signal });
  try {
    await qmp.execute(
      'pmemsave',
      { val: PATTERN_START, size: end - PATTERN_START, filename: dumpFile },
      { signal: opts.signal, timeoutMs: 60_000 },
    );
    const dump = await fsp.readFile(dumpFile);
    return checkPattern(dump);
  } finally {
    await fsp.rm(dumpFile, { force: true });
    if (st.running && opts.resume !== false) await qmp.execute('cont', undefined, { signal: opts.signal });
  }
}
