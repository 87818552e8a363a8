// Disk images brought in by a user (`vm new --image`, `vm import --copy`): any format qemu-img
// reads. Each file of the image is probed once with `qemu-img info` (which never opens a
// backing file), every file it refers to (backing chain, vmdk extents, qcow2 data file) must
// lie in a storage pool this host may use, and the copy then reads exactly the chain that was
// checked, with each file's probed format pinned (a JSON filename): QEMU never follows a path
// or guesses a format on its own.
import path from 'node:path';
import { FerryError, InvalidInputError, messageOf } from '../errors.js';
import { run, type RunOptions } from '../util/exec.js';
import type { ImageFormat } from '../qemu/img.js';
import { convertHeld } from '../qemu/img-files.js';
import { readHeaderInfo } from '../qemu/qcow2-header.js';
import fsp from 'node:fs/promises';
import { assertInUsablePool, type PoolDef } from '../storage/pools.js';

/** Longest backing chain accepted (QEMU's own limit is 16 too, in its probe of chains). */
export const MAX_CHAIN = 16;
/** Formats that need a secret to read; Ferry holds none. */
const ENCRYPTED_FORMATS = new Set(['luks']);

export interface ChainFile {
  path: string;
  /** The format qemu-img probed (any it reads, e.g. vmdk). */
  format: string;
  virtualSizeBytes: number;
  actualSizeBytes: number;
  /** It names other files (vmdk extents, a qcow2 data file), which QEMU opens by their paths. */
  external?: boolean;
}

export interface ProbedImage {
  /** The image itself first, then its backing files. */
  chain: ChainFile[];
  virtualSizeBytes: number;
  /** Bytes a flattened copy may take at most (every file's allocation). */
  allocatedBytes: number;
}

interface RawInfo {
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  encrypted?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  'format-specific'?: { type?: string; data?: { extents?: Array<{ filename?: string }>; 'data-file'?: string } };
}

export interface ProbeOptions extends Pick<RunOptions, 'signal' | 'timeoutMs'> {
  pools: PoolDef[];
  host: string;
  /** Names the image in messages ("image", "disk vda"). */
  what?: string;
  /** Read headers of images a running QEMU holds (qemu-img -U): a disk at start-up or arriving. */
  forceShare?: boolean;
  /**
   * The image's own format, when it is known (a VM's disk: its vm.json's). Never guessed then:
   * a raw disk's first bytes are the guest's, which could write a qcow2 header naming a backing.
   */
  format?: string;
}

/**
 * Probes an image and its backing chain, checking every file it refers to against the
 * pools. Throws a clear error (and has changed nothing) when the image cannot be used.
 */
export async function probeImage(file: string, opts: ProbeOptions): Promise<ProbedImage> {
  const what = opts.what ?? 'image';
  const chain: ChainFile[] = [];
  let cur: string | null = path.resolve(file);
  let pinned: string | undefined = opts.format;
  while (cur) {
    if (chain.length >= MAX_CHAIN)
      throw new InvalidInputError(
        `Cannot use ${what} ${file}: its backing chain is longer than ${MAX_CHAIN} files; ` +
          "flatten it first ('qemu-img convert -O qcow2 IMAGE FLAT.qcow2')",
        { path: file },
      );
    const label: string = chain.length ? `backing file ${cur} of ${what} ${file}` : `${what} ${file}`;
    await assertInUsablePool(opts.pools, opts.host, cur, chain.length ? `the backing file of ${file}` : what);
    const info = await readInfo(cur, label, pinned, opts);
    if (info.encrypted || ENCRYPTED_FORMATS.has(info.format))
      throw new InvalidInputError(
        `Cannot use ${label}: it is encrypted and Ferry holds no key for it; decrypt it into a plain image first`,
        { path: cur },
      );
    const refs = [
      ...(info['format-specific']?.data?.extents ?? []).flatMap((e) => (e.filename ? [e.filename] : [])),
      ...(info['format-specific']?.data?.['data-file'] ? [info['format-specific'].data['data-file']] : []),
    ];
    for (const ref of refs) {
      if (path.resolve(ref) === cur) continue; // a monolithic vmdk names itself as its extent
      await assertInUsablePool(opts.pools, opts.host, asFile(ref, cur, label), `a data file of ${file}`);
    }
    chain.push({
      path: cur,
      format: info.format,
      virtualSizeBytes: info['virtual-size'],
      actualSizeBytes: info['actual-size'] ?? 0,
      // QEMU finds these files beside the image's own path: it cannot be handed over as a descriptor.
      ...(refs.some((r) => path.resolve(r) !== cur) ? { external: true } : {}),
    });
    const backing = info['full-backing-filename'] ?? info['backing-filename'];
    cur = backing ? asFile(backing, cur, label) : null;
    if (cur && chain.some((c) => c.path === cur))
      throw new InvalidInputError(`Cannot use ${what} ${file}: its backing chain loops through ${cur}`, { path: cur });
    pinned = info['backing-filename-format'];
  }
  return {
    chain,
    virtualSizeBytes: chain[0]?.virtualSizeBytes ?? 0,
    allocatedBytes: chain.reduce((a, c) => a + c.actualSizeBytes, 0),
  };
}

/** A referenced file as an absolute path; anything else (a URL, json:, nbd:) is refused. */
function asFile(ref: string, from: string, label: string): string {
  if (/^[a-z][a-z0-9+.-]*:/i.test(ref) && !ref.startsWith('/'))
    throw new InvalidInputError(
      `Cannot use ${label}: it refers to '${ref.slice(0, 120)}', which is not a file in a storage pool; ` +
        'flatten the image into a standalone file first',
      { path: from, ref },
    );
  return path.resolve(path.dirname(from), ref);
}

async function readInfo(file: string, label: string, format: string | undefined, opts: ProbeOptions): Promise<RawInfo> {
  // The ordinary cases in-process (qemu/qcow2-header.ts), unpinned too (a VM's raw disk is never
  // probed unpinned: checkDiskChains skips it); anything else is qemu-img's to say.
  const own = await readHeaderInfo(file, format, { signal: opts.signal });
  if (own) return own;
  const args = ['info', '--output=json', ...(opts.forceShare ? ['-U'] : []), ...(format ? ['-f', format] : []), file];
  let stdout: string;
  try {
    ({ stdout } = await run('qemu-img', args, { signal: opts.signal, timeoutMs: opts.timeoutMs ?? 30_000 }));
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    const detail = ((err as { context?: { stderr?: string } }).context?.stderr ?? messageOf(err))
      .replace(/^qemu-img: /gm, '')
      .trim()
      .split('\n')
      .slice(-2)
      .join(' / ');
    throw new FerryError(
      'E_IMAGE_UNREADABLE',
      `Cannot read ${label}: ${detail}; give a disk image qemu-img can read (qcow2, raw, vmdk, vhdx, vpc, ...)`,
      { context: { path: file }, cause: err },
    );
  }
  return JSON.parse(stdout) as RawInfo;
}

export interface CopyOptions extends Pick<RunOptions, 'signal' | 'timeoutMs'> {
  format: ImageFormat;
  /** Grow the copy to this virtual size (at least the image's). */
  sizeBytes?: number;
  /** The pools the image lies in: its files are read through handles opened without links (qemu/img-files.ts). */
  pools?: readonly PoolDef[];
  /** `dest` as the caller created it (migration/claim.ts); else it is created here, O_EXCL. */
  fd?: number;
}

/**
 * Copies a probed image into `dest` as a standalone file (the chain flattened), grown if asked.
 * `dest` is created here, never through a link found at its path, and qemu-img reads exactly
 * the files of the chain that was checked.
 */
export async function copyImage(img: ProbedImage, dest: string, opts: CopyOptions): Promise<void> {
  const size = Math.max(opts.sizeBytes ?? 0, img.virtualSizeBytes);
  const held = { pools: opts.pools ?? [], what: 'an image file', signal: opts.signal };
  const fill = (fd: number): Promise<void> =>
    convertHeld(
      img.chain,
      fd,
      { path: dest, format: opts.format, sizeBytes: size },
      {
        ...held,
        timeoutMs: opts.timeoutMs ?? 3600_000,
      },
    );
  if (opts.fd !== undefined) return fill(opts.fd);
  const fh = await fsp.open(dest, 'wx').catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    throw new InvalidInputError(
      `Cannot copy the image into ${dest}: it already exists; remove it or choose another path`,
      {
        path: dest,
      },
    );
  });
  let done = false;
  try {
    await fill(fh.fd);
    done = true;
  } finally {
    await fh.close();
    if (!done) await fsp.rm(dest, { force: true });
  }
}

/** Checks a requested size against the image before anything is copied. */
export function checkGrow(img: ProbedImage, sizeBytes: number | undefined, file: string): void {
  if (sizeBytes !== undefined && sizeBytes < img.virtualSizeBytes)
    throw new InvalidInputError(
      `Cannot make the disk from ${file} ${sizeBytes} bytes: the image is ${img.virtualSizeBytes} bytes and ` +
        `disks only grow; give a --disk-size of at least ${Math.ceil(img.virtualSizeBytes / 1048576)}M`,
      { path: file, sizeBytes, virtualSizeBytes: img.virtualSizeBytes },
    );
}
