// qemu-img wrapper: the four disk formats Ferry supports, all through QEMU's block layer.
import fs from 'node:fs';
import { promisify } from 'node:util';
import { ownForQemu, ownHandleForQemu } from './user.js';
import { FerryError } from '../errors.js';
import { run, runWithFd, type RunOptions } from '../util/exec.js';
import { InvalidInputError } from '../errors.js';
import { readHeaderInfo } from './qcow2-header.js';

import { IMAGE_FORMATS, type ImageFormat } from '../api/common.js';
export { IMAGE_FORMATS, type ImageFormat };

export function isImageFormat(s: string): s is ImageFormat {
  return (IMAGE_FORMATS as readonly string[]).includes(s);
}

export function assertImageFormat(s: string, field = 'format'): ImageFormat {
  if (!isImageFormat(s)) {
    throw new InvalidInputError(
      `Cannot use disk format '${s}' (${field}): unknown format; use one of ${IMAGE_FORMATS.join(', ')}`,
      { field, value: s },
    );
  }
  return s;
}

export interface ImageInfo {
  filename: string;
  /** An ImageFormat, or any other format qemu-img reports for a file it found. */
  format: string;
  virtualSizeBytes: number;
  actualSizeBytes: number;
  backingFile?: string;
  backingFormat?: string;
  dirty: boolean;
}

export type ImgOptions = Pick<RunOptions, 'signal' | 'timeoutMs'>;

/** Creates an image. vpc rounds sizes to its CHS geometry unless force_size is on; we always keep the exact size. */
export async function createImage(
  path: string,
  format: ImageFormat,
  sizeBytes: number,
  opts: ImgOptions & {
    backing?: { path: string; format: ImageFormat };
    fd?: number;
    /** Name the backing without opening it (a running QEMU holds it locked); needs `sizeBytes`. */
    unsafeBacking?: boolean;
  } = {},
): Promise<void> {
  const args = ['create', '-q', '-f', format];
  if (opts.unsafeBacking) args.push('-u');
  const o: string[] = [];
  if (format === 'vpc') o.push('force_size=on', 'subformat=dynamic');
  if (format === 'vhdx') o.push('subformat=dynamic');
  if (o.length) args.push('-o', o.join(','));
  if (opts.backing) {
    // Beside /dev/fd/3 a relative backing name would point into /dev/fd.
    if (opts.fd !== undefined && !opts.backing.path.startsWith('/'))
      throw new FerryError('E_INTERNAL', `Cannot create ${path}: its backing ${opts.backing.path} is not absolute`);
    args.push('-b', opts.backing.path, '-F', opts.backing.format);
  }
  // `fd`: the file the caller opened (claimed, without links), whatever `path` names by now.
  args.push(opts.fd === undefined ? path : '/dev/fd/3');
  if (!opts.backing || sizeBytes > 0) args.push(String(sizeBytes));
  if (opts.fd === undefined) await run('qemu-img', args, opts);
  else await runWithFd('qemu-img', args, opts.fd, opts);
  // QEMU may open it at once (a mirror target, a checkpoint overlay): it must be QEMU's user's.
  if (opts.fd === undefined) await ownForQemu(path);
  else await ownHandleForQemu(`/proc/self/fd/${opts.fd}`);
}

const ftruncate = promisify(fs.ftruncate);
const pwrite = promisify(fs.write);

/**
 * A new raw image through the caller's descriptor, as `qemu-img create -f raw` makes it, without
 * its process: the size rounded up to 512 bytes, sparse but for its first block, which is written
 * (QEMU probes a disk's O_DIRECT alignment by reading it, and a hole on some filesystems accepts
 * any alignment: QEMU's own `allocate_first_block`).
 */
export async function sizeRawImage(fd: number, sizeBytes: number): Promise<void> {
  const size = Math.ceil(sizeBytes / 512) * 512;
  // A size from a peer's request: past 2^53 it is no longer an exact byte count.
  if (!Number.isSafeInteger(size) || size < 0)
    throw new InvalidInputError(`Cannot size a raw image at ${sizeBytes} bytes: not a byte count; give its real size`, {
      sizeBytes,
    });
  await ftruncate(fd, size);
  const first = Math.min(size, 4096);
  if (first > 0) await pwrite(fd, Buffer.alloc(first), 0, first, 0);
}

/** The persistent dirty bitmaps stored in a qcow2 image no QEMU has open (their names). */
export async function listBitmaps(path: string, opts: ImgOptions = {}): Promise<string[]> {
  const { stdout } = await run('qemu-img', ['info', '--output=json', '-f', 'qcow2', path], opts);
  const j = JSON.parse(stdout) as { 'format-specific'?: { data?: { bitmaps?: Array<{ name?: unknown }> } } };
  return (j['format-specific']?.data?.bitmaps ?? []).flatMap((b) => (typeof b.name === 'string' ? [b.name] : []));
}

/** Removes persistent dirty bitmap `name` from a qcow2 image no QEMU has open. */
export async function removeBitmap(path: string, name: string, opts: ImgOptions = {}): Promise<void> {
  await run('qemu-img', ['bitmap', '-f', 'qcow2', '--remove', path, name], { timeoutMs: 60_000, ...opts });
}

interface RawInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  'dirty-flag'?: boolean;
}

/** Image facts as JSON. `forceShare` (-U) reads an image a running QEMU holds locked. */
export async function imageInfo(
  path: string,
  opts: ImgOptions & { forceShare?: boolean; format?: ImageFormat } = {},
): Promise<ImageInfo> {
  // A held image's plain qcow2 or raw file is read in-process (qcow2-header.ts): a qemu-img
  // process per disk was on a shared-nothing move's pre-flight. Without -U, qemu-img's lock
  // check is the caller's point, so it is asked.
  const own = opts.forceShare && opts.format ? await readHeaderInfo(path, opts.format, opts) : null;
  if (own)
    return {
      filename: path,
      format: own.format,
      virtualSizeBytes: own['virtual-size'],
      actualSizeBytes: own['actual-size'],
      ...(own['backing-filename'] ? { backingFile: own['backing-filename'] } : {}),
      ...(own['backing-filename-format'] ? { backingFormat: own['backing-filename-format'] } : {}),
      dirty: own.dirty,
    };
  const args = ['info', '--output=json'];
  if (opts.forceShare) args.push('-U');
  if (opts.format) args.push('-f', opts.format);
  args.push(path);
  const { stdout } = await run('qemu-img', args, opts);
  const j = JSON.parse(stdout) as RawInfo;
  return {
    filename: j.filename,
    format: j.format,
    virtualSizeBytes: j['virtual-size'],
    actualSizeBytes: j['actual-size'] ?? 0,
    ...(j['backing-filename'] ? { backingFile: j['backing-filename'] } : {}),
    ...(j['backing-filename-format'] ? { backingFormat: j['backing-filename-format'] } : {}),
    dirty: j['dirty-flag'] ?? false,
  };
}

/** Copies/converts an image. Zero regions stay sparse in the output. */
export async function convertImage(
  src: string,
  dst: string,
  opts: ImgOptions & { srcFormat?: ImageFormat; dstFormat: ImageFormat; forceShare?: boolean },
): Promise<void> {
  const args = ['convert', '-q'];
  if (opts.forceShare) args.push('-U');
  if (opts.srcFormat) args.push('-f', opts.srcFormat);
  args.push('-O', opts.dstFormat);
  if (opts.dstFormat === 'vpc') args.push('-o', 'force_size=on');
  args.push(src, dst);
  await run('qemu-img', args, { timeoutMs: 30 * 60_000, ...opts });
}

export interface CheckResult {
  ok: boolean;
  corruptions: number;
  leaks: number;
  raw: unknown;
}

/** Consistency check; formats without metadata to check (raw, vpc) report ok. */
export async function checkImage(
  path: string,
  opts: ImgOptions & { format?: ImageFormat; forceShare?: boolean } = {},
): Promise<CheckResult> {
  const args = ['check', '--output=json'];
  if (opts.forceShare) args.push('-U');
  if (opts.format) args.push('-f', opts.format);
  args.push(path);
  try {
    const { stdout } = await run('qemu-img', args, opts);
    const j = JSON.parse(stdout) as { corruptions?: number; leaks?: number };
    return { ok: !(j.corruptions ?? 0), corruptions: j.corruptions ?? 0, leaks: j.leaks ?? 0, raw: j };
  } catch (err) {
    // qemu-img check exits 63 for "format does not support checks": nothing to check is not a failure.
    const stderr = (err as { context?: { stderr?: string } }).context?.stderr ?? '';
    if (/does not support checks/i.test(stderr)) return { ok: true, corruptions: 0, leaks: 0, raw: null };
    throw err;
  }
}
