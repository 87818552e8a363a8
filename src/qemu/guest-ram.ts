// How much of a running guest's RAM its QEMU holds in host memory: an upper bound on what a
// move's first pass puts on the wire. QEMU sends a page that reads as zeroes as a few bytes
// (a flag), and a page the guest never touched reads as zeroes and is not resident. So a
// prediction priced with every page of a 16 GiB guest that uses 4 GiB would be 4× too long
// (docs/performance.md § Predict before moving). Read from /proc/PID/smaps: guest RAM is the
// one read-write mapping exactly the size of the VM's memory (QEMU 7.2 maps each RAM block
// whole; the TCG code buffer and QEMU's heaps have other sizes). Pages zeroed by the guest stay
// resident, so the bound is high, never low.
import fsp from 'node:fs/promises';

/**
 * The `Rss` (bytes) of the read-write mapping of `memoryMiB` in an smaps text, or null when no
 * mapping has that size (another memory layout: then nothing is claimed). Pure.
 */
export function guestRamRss(smaps: string, memoryMiB: number): number | null {
  const wantKb = memoryMiB * 1024;
  let writable = false;
  let sizeKb = -1;
  for (const line of smaps.split('\n')) {
    // A mapping's header: "7f7963e00000-7f7973e00000 rw-p 00000000 00:00 0   [path]".
    const head = /^[0-9a-f]+-[0-9a-f]+ (\S{4}) /.exec(line);
    if (head) {
      writable = head[1]?.startsWith('rw') === true;
      sizeKb = -1;
      continue;
    }
    const field = /^(Size|Rss):\s+(\d+) kB$/.exec(line);
    if (!field) continue;
    if (field[1] === 'Size') sizeKb = Number(field[2]);
    else if (writable && sizeKb === wantKb) return Number(field[2]) * 1024;
  }
  return null;
}

/**
 * The guest RAM that QEMU `pid` holds in host memory, in bytes; null when it gives no figure (the
 * process is gone, the agent may not read its memory map, or no mapping has the memory's size).
 * Best effort: a prediction without it prices every page.
 */
export async function guestRamResident(
  pid: number,
  memoryMiB: number,
  o: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<number | null> {
  const signal = AbortSignal.any([AbortSignal.timeout(o.timeoutMs ?? 5000), ...(o.signal ? [o.signal] : [])]);
  try {
    return guestRamRss(await fsp.readFile(`/proc/${pid}/smaps`, { encoding: 'utf8', signal }), memoryMiB);
  } catch {
    return null;
  }
}
