// The size a guest sees of a disk, for `vm show` and `vm list`: read from the image itself for
// raw (the file's length) and qcow2 (its header), so listing a host's VMs costs no qemu-img
// process per disk (each is a fork of the agent and a QEMU start: 125 ms of the agent's CPU per
// `vm list` of 20 VMs here, 37 ms without). The file is opened beneath its pool without
// following any link, and only when it is a regular file: opening a device node has effects.
// Other formats, a block device, a path in no pool and a header that does not look like qcow2
// ask qemu-img, as before; a link fails (the view shows 0), as a VM's start refuses it. A read
// that hangs (a dead network pool) fails after the timeout, as qemu-img did.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { withBeneath } from '../storage/beneath.js';
import { imageInfo, type ImageFormat, type ImgOptions } from './img.js';

/** "QFI\xfb": qcow2's magic (docs/interop/qcow2.txt); the virtual size is the u64 at byte 24. */
const QCOW2_MAGIC = 0x514649fb;
const QCOW2_SIZE_OFFSET = 24;
/** QEMU counts a raw file in 512-byte sectors, rounding its length up. */
const SECTOR = 512;

export async function virtualSize(
  file: string,
  format: ImageFormat,
  opts: ImgOptions & { roots: readonly string[] },
): Promise<number> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const own =
    format === 'raw' || format === 'qcow2' ? await withTimeout(ownRead(file, format, opts.roots), timeoutMs) : null;
  if (own !== null) return own;
  return (await imageInfo(file, { ...opts, forceShare: true, format })).virtualSizeBytes;
}

/** The size from the file itself, or null when only qemu-img can tell. */
async function ownRead(file: string, format: 'raw' | 'qcow2', roots: readonly string[]): Promise<number | null> {
  // lstat opens nothing. A block device (an LVM volume as a raw disk) is qemu-img's to judge,
  // as before. A link is refused as a VM's start refuses it; a FIFO, socket, device node or
  // folder is no disk (and qemu-img would wait on a FIFO until its timeout).
  const l = await fsp.lstat(file);
  if (l.isBlockDevice()) return null;
  if (l.isSymbolicLink()) throw new Error(`${file} is a symbolic link, not the image itself`);
  if (!l.isFile()) throw new Error(`${file} is not a file or block device`);
  const abs = path.resolve(file);
  if (!roots.some((r) => abs.startsWith(path.resolve(r) + path.sep))) return null; // in no pool: as before
  return withBeneath(
    roots,
    file,
    'file',
    'disk image',
    async (proc) => {
      // Still a regular file (withBeneath checked it through an O_PATH handle, no link followed).
      const fh = await fsp.open(proc, fs.constants.O_RDONLY | fs.constants.O_NOCTTY | fs.constants.O_NONBLOCK);
      try {
        const st = await fh.stat();
        if (!st.isFile()) return null;
        if (format === 'raw') return Math.ceil(st.size / SECTOR) * SECTOR;
        const head = Buffer.alloc(QCOW2_SIZE_OFFSET + 8);
        const { bytesRead } = await fh.read(head, 0, head.length, 0);
        if (bytesRead < head.length || head.readUInt32BE(0) !== QCOW2_MAGIC) return null;
        const version = head.readUInt32BE(4);
        if (version !== 2 && version !== 3) return null;
        const size = head.readBigUInt64BE(QCOW2_SIZE_OFFSET);
        return size <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(size) : null;
      } finally {
        await fh.close();
      }
    },
    'open',
  );
}

/** A hung file system (a dead NFS pool) must not hang the view: it fails (shows 0) instead. */
async function withTimeout(p: Promise<number | null>, ms: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  p.catch(() => undefined); // still pending when the time is up: its late failure is not unhandled
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`reading the image took more than ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}
