// How much of a running guest's RAM holds data: what a move's first pass puts on the wire.
// QEMU sends a page that reads as zeroes as a few bytes (a flag), so a prediction priced with
// every page of a 16 GiB guest that uses 4 GiB would be 4× too long (docs/performance.md
// § Predict before moving). Guest RAM is the one read-write mapping of QEMU exactly the size
// of the VM's memory (QEMU 7.2 maps each RAM block whole; the TCG code buffer and QEMU's heaps
// have other sizes), found in /proc/PID/smaps.
//
// Two measures, the first preferred:
//  - sampled: pages read through /proc/PID/mem at spread-out places and checked for zeroes, as
//    QEMU checks them before it sends one. Only zero or not is kept; the bytes are dropped.
//  - resident: the mapping's Rss, an upper bound. Alone it is too coarse on most hosts: QEMU
//    asks for transparent huge pages, and khugepaged (max_ptes_none 511 by default) fills a
//    2 MiB page as soon as one of its 4 KiB pages was written, so after a while every page of a
//    guest that touched its memory here and there is resident (measured: 256 of 256 MiB for an
//    idle probe guest whose pages hold 35 % data). Used when the agent may not read the memory.
import fsp from 'node:fs/promises';

const PAGE = 4096;
/** Spread-out places sampled, and pages read at each: 2048 pages, ~±1 % of the share. */
const STRATA = 256;
const RUN = 8;
const ZERO_PAGE = Buffer.alloc(PAGE);

export interface GuestRamMapping {
  /** The mapping's first address in QEMU's memory (user addresses fit a double exactly: 47–56 bits). */
  start: number;
  /** Its Rss: what QEMU holds in host memory. */
  rssBytes: number;
}

/** The read-write mapping of `memoryMiB` in an smaps text, or null when no mapping has that size. Pure. */
export function guestRamMapping(smaps: string, memoryMiB: number): GuestRamMapping | null {
  const wantKb = memoryMiB * 1024;
  let start: number | null = null;
  let sizeKb = -1;
  for (const line of smaps.split('\n')) {
    // A mapping's header: "7f7963e00000-7f7973e00000 rw-p 00000000 00:00 0   [path]".
    const head = /^([0-9a-f]+)-[0-9a-f]+ (\S{4}) /.exec(line);
    if (head) {
      const at = Number.parseInt(head[1] ?? '', 16);
      start = head[2]?.startsWith('rw') === true && Number.isSafeInteger(at) ? at : null;
      sizeKb = -1;
      continue;
    }
    const field = /^(Size|Rss):\s+(\d+) kB$/.exec(line);
    if (!field) continue;
    if (field[1] === 'Size') sizeKb = Number(field[2]);
    else if (start !== null && sizeKb === wantKb) return { start, rssBytes: Number(field[2]) * 1024 };
  }
  return null;
}

/**
 * Where to read: `strata` equal slices of `pages` pages, one run of `run` pages at a random
 * place in each (a stratified sample: every region of memory is seen, none twice). Pure but
 * for `random`.
 */
export function samplePlan(pages: number, strata: number, run: number, random: () => number = Math.random): number[] {
  const n = Math.max(1, Math.min(strata, Math.floor(pages / Math.max(1, run))));
  const starts: number[] = [];
  for (let s = 0; s < n; s++) {
    const lo = Math.floor((s * pages) / n);
    const room = Math.floor(((s + 1) * pages) / n) - lo - run;
    starts.push(lo + Math.floor(random() * (Math.max(0, room) + 1)));
  }
  return starts;
}

/** How many whole pages of `buf`'s first `length` bytes hold a byte other than zero. Pure. */
export function dataPages(buf: Buffer, length: number): number {
  let n = 0;
  for (let at = 0; at + PAGE <= length; at += PAGE) if (!buf.subarray(at, at + PAGE).equals(ZERO_PAGE)) n++;
  return n;
}

export interface GuestRamUse {
  /** Bytes of guest RAM that hold data (sampled), or that QEMU holds (resident: an upper bound). */
  bytes: number;
  from: 'sampled' | 'resident';
  /**
   * Sampled only: the share of data pages in each of equal consecutive parts of the guest's RAM,
   * lowest address first (the order QEMU's first pass sends them): where the data lies decides
   * how much is left when QEMU pauses the guest (predict.ts).
   */
  byPart?: number[];
}

/**
 * How much of the guest RAM of QEMU `pid` holds data; null when there is no figure (the process
 * is gone, or no mapping has the memory's size). Falls back to the resident bound when the
 * memory cannot be read (an agent without the right to trace QEMU). Best effort: a prediction
 * without it prices every page. ~256 reads, a few ms.
 */
export async function guestRamInUse(
  pid: number,
  memoryMiB: number,
  o: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<GuestRamUse | null> {
  const signal = AbortSignal.any([AbortSignal.timeout(o.timeoutMs ?? 5000), ...(o.signal ? [o.signal] : [])]);
  let map: GuestRamMapping | null;
  try {
    map = guestRamMapping(await fsp.readFile(`/proc/${pid}/smaps`, { encoding: 'utf8', signal }), memoryMiB);
  } catch {
    return null;
  }
  if (!map) return null;
  const memBytes = memoryMiB * 1024 * 1024;
  const resident: GuestRamUse = { bytes: Math.min(memBytes, map.rssBytes), from: 'resident' };
  let fh: fsp.FileHandle | null = null;
  try {
    fh = await fsp.open(`/proc/${pid}/mem`, 'r');
    const buf = Buffer.alloc(RUN * PAGE);
    let read = 0;
    let data = 0;
    const byPart: number[] = [];
    // samplePlan gives one place per part, in address order.
    for (const page of samplePlan(memBytes / PAGE, STRATA, RUN)) {
      signal.throwIfAborted();
      // A number, not a bigint: Node 20's FileHandle.read fails a bigint position with EIO here.
      const { bytesRead } = await fh.read(buf, 0, buf.length, map.start + page * PAGE);
      const pages = Math.floor(bytesRead / PAGE);
      const here = dataPages(buf, bytesRead);
      read += pages;
      data += here;
      byPart.push(pages ? here / pages : 0);
    }
    if (read === 0) return resident;
    // Never above what QEMU holds: a page it does not hold reads as zeroes anyway.
    return { bytes: Math.min(resident.bytes, Math.round((data / read) * memBytes)), from: 'sampled', byPart };
  } catch {
    return signal.aborted ? null : resident;
  } finally {
    await fh?.close().catch(() => undefined);
  }
}
