// Resumable disk copy (issue 17 item 6), the decision. The destination keeps a partial image
// after a cut move with a marker that says which move, VM and disk it belongs to and how the
// file looked when kept; a retry reuses it only when everything still matches, and the source
// resumes a disk only when its bitmap is still usable. Anything else is a full copy, with the
// reason said. Pure functions: the agents feed them what they read (tests: resume-marker.test.ts).
//
// Why the file's size and mtime: the image must not have been touched between the cut and the
// retry (an operator's qemu-img, a restore): the bitmap only knows the source's writes.
// Why the destination's export writes through: measured on QEMU 7.2, a SIGKILLed destination
// QEMU exporting a qcow2 without it lost acknowledged clusters (qemu-img compare: mismatch);
// with `writethrough: true` the resumed image compared identical.
import { createHash } from 'node:crypto';
import * as z from 'zod';
import type { BitmapState } from './resume-copy.js';

/**
 * Kept images expire: a day-old partial copy is worth less than the space it holds. The
 * source's bitmaps of cut copies expire by the same rule (resume-bitmaps.ts): neither half of
 * a copy outlives the other.
 */
export const RESUME_MAX_AGE_MS = 24 * 3600_000;

/** Past RESUME_MAX_AGE_MS since `keptAt` (an ISO time; one that does not parse is expired too). */
export function keptExpired(keptAt: string, nowMs: number): boolean {
  const kept = Date.parse(keptAt);
  return !Number.isFinite(kept) || nowMs - kept > RESUME_MAX_AGE_MS;
}

const Key = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9._-]+$/);
/** A move key: names the source's bitmap and the destination's markers. */
export const ResumeKey = Key;

/**
 * The key of a copy: the VM, its source and its destination. Not the job id: a plain retry
 * (the same `ferry move-vm VM --to H --include-storage`) is a new job and must find the copy.
 * The disk's path is checked by the marker itself.
 */
export function moveKeyOf(vmId: string, source: string, destination: string): string {
  return createHash('sha256').update(`${vmId}\0${source}\0${destination}`).digest('hex').slice(0, 16);
}
const AbsPath = z
  .string()
  .min(2)
  .max(4096)
  .refine((p) => p.startsWith('/') && !p.includes('\0'), { message: 'must be an absolute path' });
const Bytes = z
  .number()
  .int()
  .min(0)
  .max(2 ** 53);

/** What a retry asks of the destination for one disk (bounded: it arrives over the peer API). */
export const ResumeOffer = z
  .object({
    /** The move key the source's bitmap is named after (stable across retries of one move). */
    moveKey: Key,
    vmId: Key,
    source: Key,
    diskId: Key,
    path: AbsPath,
    virtualSizeBytes: Bytes,
    format: z.enum(['qcow2', 'raw']),
  })
  .strict();
export type ResumeOffer = z.infer<typeof ResumeOffer>;

/** Kept beside a cut move's partial image on the destination. */
export const ResumeMarker = ResumeOffer.extend({
  /** When the image was kept, and how the file looked then. */
  keptAt: z.string().max(64),
  fileSize: Bytes,
  fileMtimeMs: z.number().min(0),
}).strict();
export type ResumeMarker = z.infer<typeof ResumeMarker>;

export type Verdict = { resume: true } | { resume: false; why: string };

/**
 * Destination: may the kept image at the offer's path be written on from where the cut left
 * it? `file` is what stat says now (null: it is gone).
 */
export function checkKeptImage(
  marker: ResumeMarker | null,
  offer: ResumeOffer,
  file: { size: number; mtimeMs: number } | null,
  nowMs: number,
): Verdict {
  if (!marker) return { resume: false, why: 'no partial copy was kept here' };
  const mismatch = (
    [
      ['move', marker.moveKey, offer.moveKey],
      ['VM', marker.vmId, offer.vmId],
      ['source host', marker.source, offer.source],
      ['disk', marker.diskId, offer.diskId],
      ['path', marker.path, offer.path],
      ['format', marker.format, offer.format],
      ['virtual size', marker.virtualSizeBytes, offer.virtualSizeBytes],
    ] as const
  ).find(([, a, b]) => a !== b);
  if (mismatch) return { resume: false, why: `the kept copy is of another ${mismatch[0]}` };
  if (keptExpired(marker.keptAt, nowMs) || Date.parse(marker.keptAt) > nowMs + 60_000)
    return { resume: false, why: 'the kept copy expired (older than 24 h)' };
  if (!file) return { resume: false, why: 'the kept copy is gone' };
  if (file.size !== marker.fileSize || file.mtimeMs !== marker.fileMtimeMs)
    return { resume: false, why: 'the kept copy changed since the cut' };
  return { resume: true };
}

/** Source: resume a disk only when both ends can; else a full copy and why. */
export function decideResume(bitmap: BitmapState, dest: Verdict): Verdict {
  if (bitmap.state === 'absent') return { resume: false, why: "the source's record of what was copied is gone" };
  if (bitmap.state === 'unusable')
    return { resume: false, why: `the source's record of what was copied is unusable (${bitmap.why})` };
  if (!dest.resume) return dest;
  return { resume: true };
}

/** The move's log line for one disk. */
export function resumeLine(diskId: string, v: Verdict, sent?: { bytes: number; of: number }): string {
  if (!v.resume) return `disk '${diskId}': full copy (${v.why})`;
  const mib = (n: number): string => (n / 1048576).toFixed(1);
  return sent
    ? `disk '${diskId}': copy resumed, ${mib(sent.bytes)} MiB re-sent of ${mib(sent.of)} MiB`
    : `disk '${diskId}': copy resumes from the cut`;
}

/**
 * After the first passes: per disk that had something to explain (`verdicts`, null: a first
 * attempt), the log line, and for a resumed one the record's `resumed` figures.
 */
export function reportResumed(
  disks: ReadonlyArray<{ id: string; resumed?: { resentBytes: number; diskBytes: number } }>,
  log: (m: string) => void,
  copies: ReadonlyArray<{ diskId: string; copied: number | undefined; diskBytes: number; verdict: Verdict | null }>,
): void {
  for (const c of copies) {
    const v = c.verdict;
    if (!v) continue;
    const rd = disks.find((x) => x.id === c.diskId);
    if (v.resume && c.copied !== undefined && rd) {
      rd.resumed = { resentBytes: c.copied, diskBytes: c.diskBytes };
      log(resumeLine(c.diskId, v, { bytes: c.copied, of: c.diskBytes }));
    } else log(resumeLine(c.diskId, v));
  }
}
