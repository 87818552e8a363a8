// What `qemu-img info -f qcow2` says of a plain qcow2 image, read from its header in-process:
// a disk's chain is probed on every start and every move's Prepare, and a qemu-img process per
// file cost ~10–20 ms of the destination's critical path (docs/performance.md § A qcow2 chain
// read from its headers). Only the ordinary case is read here: anything else (encryption, an
// external data file, an unknown incompatible feature, a backing file without its format, a
// header QEMU would refuse) answers null and the caller asks qemu-img, which says what it is.
// The fields are QEMU's docs/interop/qcow2.txt; the chain read is pinned into QEMU's nodes, so
// QEMU opens exactly the files checked whatever a header says later.
import fs from 'node:fs';
import fsp from 'node:fs/promises';

/** The fields of `qemu-img info --output=json` the chain probe reads (vm/image.ts). */
export interface HeaderInfo {
  format: 'qcow2' | 'raw';
  'virtual-size': number;
  'actual-size': number;
  /** As written in the header; relative names are relative to the image's folder. */
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  /** The dirty bit (lazy refcounts not yet written back), as qemu-img's `dirty-flag`. */
  dirty: boolean;
}

const MAGIC = 0x514649fb; // "QFI\xfb"
/** Extension types (qcow2.txt § Header extensions). */
const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_TABLE = 0x6803f857;
const EXT_BITMAPS = 0x23852875;
/** Extensions that name no file and change nothing the probe reports. */
const HARMLESS = new Set([EXT_FEATURE_TABLE, EXT_BITMAPS]);
/** Incompatible features that name no file: dirty (lazy refcounts), compression type, extended L2. */
const KNOWN_INCOMPATIBLE = (1n << 0n) | (1n << 3n) | (1n << 4n);
/** QEMU's limit on a backing file name (block/qcow2.c). */
const MAX_BACKING_NAME = 1023;
/** The header and its extensions lie in the first cluster; QEMU's largest cluster is 2 MiB. */
const MAX_CLUSTER_BITS = 21;
const MIN_CLUSTER_BITS = 9;

/**
 * The header's answer for `file`, or null when qemu-img must be asked (not a plain qcow2 image,
 * or not readable here: a link, a missing file).
 */
export async function readQcow2Info(file: string, opts: { signal?: AbortSignal } = {}): Promise<HeaderInfo | null> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return null;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return null;
    const head = Buffer.alloc(4096);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    opts.signal?.throwIfAborted();
    const parsed = parseQcow2Header(head.subarray(0, bytesRead));
    if (!parsed) return null;
    const info: HeaderInfo = {
      format: 'qcow2',
      // QEMU counts whole sectors: a size that is not a multiple of 512 is rounded down.
      'virtual-size': Math.floor(parsed.size / 512) * 512,
      'actual-size': st.blocks * 512,
      dirty: parsed.dirty,
    };
    if (parsed.backing === null) return info;
    const { offset, length } = parsed.backing;
    let name = head.subarray(offset, offset + length);
    if (offset + length > bytesRead) {
      // Past the first 4 KiB (a large cluster's header): read it where it lies.
      name = Buffer.alloc(length);
      if ((await fh.read(name, 0, length, offset)).bytesRead !== length) return null;
    }
    const backing = name.toString('utf8');
    // Bytes that are not UTF-8 read back as other bytes (qemu-img's JSON writer and QEMU differ too).
    if (!Buffer.from(backing, 'utf8').equals(name)) return null;
    // A name QEMU reads differently (a NUL ends it there) or that is no file name: qemu-img says.
    if (!backing || backing.includes('\0') || parsed.backingFormat === undefined) return null;
    return { ...info, 'backing-filename': backing, 'backing-filename-format': parsed.backingFormat };
  } finally {
    await fh.close();
  }
}

/** What `qemu-img info -f raw` says of a regular file (its length; no header to read), or null. */
export async function readRawInfo(file: string): Promise<HeaderInfo | null> {
  const st = await fsp.lstat(file).catch(() => null);
  if (!st?.isFile()) return null;
  // QEMU counts whole sectors: a raw file's last partial one counts (rounded up).
  return {
    format: 'raw',
    'virtual-size': Math.ceil(st.size / 512) * 512,
    'actual-size': st.blocks * 512,
    dirty: false,
  };
}

/**
 * The in-process answer for `file` read as `format` (undefined: unpinned, as qemu-img's probe
 * would take a file with a valid qcow2 header for qcow2, no format scoring higher), or null
 * when qemu-img must be asked.
 */
export function readHeaderInfo(
  file: string,
  format: string | undefined,
  opts: { signal?: AbortSignal | undefined } = {},
): Promise<HeaderInfo | null> {
  if (format === 'qcow2' || format === undefined)
    return readQcow2Info(file, opts.signal ? { signal: opts.signal } : {});
  return format === 'raw' ? readRawInfo(file) : Promise.resolve(null);
}

export interface Qcow2Header {
  size: number;
  dirty: boolean;
  /** Where the backing file name lies, or null when the image has none. */
  backing: { offset: number; length: number } | null;
  /** From the backing format extension (absent: QEMU would probe the backing file's format). */
  backingFormat?: string;
}

/** The header's fields, or null for anything but a plain qcow2 header (see the file's head). */
export function parseQcow2Header(b: Buffer): Qcow2Header | null {
  if (b.length < 72 || b.readUInt32BE(0) !== MAGIC) return null;
  const version = b.readUInt32BE(4);
  if (version !== 2 && version !== 3) return null;
  const backingOffset = b.readBigUInt64BE(8);
  const backingSize = b.readUInt32BE(16);
  const clusterBits = b.readUInt32BE(20);
  const size = b.readBigUInt64BE(24);
  const cryptMethod = b.readUInt32BE(32);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) return null;
  const cluster = 1 << clusterBits;
  if (cryptMethod !== 0 || size > BigInt(Number.MAX_SAFE_INTEGER)) return null;
  let headerLength = 72;
  let dirty = false;
  if (version === 3) {
    if (b.length < 104) return null;
    const incompatible = b.readBigUInt64BE(72);
    if ((incompatible & ~KNOWN_INCOMPATIBLE) !== 0n) return null;
    dirty = (incompatible & 1n) !== 0n;
    headerLength = b.readUInt32BE(100);
    if (headerLength < 104 || headerLength > cluster || headerLength % 8 !== 0) return null;
    // What QEMU refuses at open (block/qcow2.c), refused here too rather than answered for:
    // refcounts wider than 64 bits; subclusters under 512 bytes (extended L2 needs 16 KiB
    // clusters); a compression type QEMU does not know, or one its feature bit contradicts.
    if (b.readUInt32BE(96) > 6) return null;
    if ((incompatible & (1n << 4n)) !== 0n && clusterBits < 14) return null;
    const compression = headerLength > 104 ? b.readUInt8(104) : 0;
    if (compression > 1 || (compression !== 0) !== ((incompatible & (1n << 3n)) !== 0n)) return null;
  }
  let backing: Qcow2Header['backing'] = null;
  if (backingOffset !== 0n) {
    if (backingSize === 0 || backingSize > MAX_BACKING_NAME) return null;
    if (backingOffset + BigInt(backingSize) > BigInt(cluster)) return null;
    backing = { offset: Number(backingOffset), length: backingSize };
  }
  // The extensions, up to the end mark, the backing name or the end of the first cluster.
  const limit = Math.min(cluster, backing ? backing.offset : cluster);
  let backingFormat: string | undefined;
  let at = headerLength;
  for (;;) {
    if (at + 8 > limit || at + 8 > b.length) return null;
    const type = b.readUInt32BE(at);
    const len = b.readUInt32BE(at + 4);
    at += 8;
    if (type === EXT_END) break;
    if (at + len > limit || at + len > b.length) return null;
    if (type === EXT_BACKING_FORMAT) {
      const fmt = b.toString('latin1', at, at + len);
      if (!/^[a-z0-9_-]{1,15}$/.test(fmt)) return null;
      backingFormat = fmt;
    } else if (!HARMLESS.has(type)) return null; // the data file's name, an encryption header, an unknown one
    at += Math.ceil(len / 8) * 8;
  }
  return { size: Number(size), dirty, backing, ...(backingFormat !== undefined ? { backingFormat } : {}) };
}
