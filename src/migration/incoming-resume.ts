// Resumable disk copy (issue 17 item 6), destination side. At Prepare each disk's kept image is
// either taken over (its marker matches what the source offers: same move key, VM, source,
// disk, path, format, size, file untouched, < 24 h) or deleted; a cut move's undo keeps its
// images with a marker instead of deleting them (Prepare's config is still removed, so no VM
// is ever registered on, or started from, a partial image); expired ones are deleted.
import fsp from 'node:fs/promises';
import type { IncomingRequest } from '../api/peer-actions.js';
import { checkKeptImage, ResumeOffer, type Verdict } from './resume-marker.js';
import { dropMarker, expiredMarkers, keepImage, readMarker } from './resume-store.js';

type Storage = NonNullable<IncomingRequest['storage']>;

export type KeptAnswer = { diskId: string } & ({ resume: true } | { resume: false; why: string });

/** What a kept image's marker records, saved in Prepare's journal so an undo (or a recovery) can keep it. */
export type KeepEntry = ResumeOffer;

/** A kept image as its marker records it (size, mtime), or null when it is gone or not a file. */
export const statOf = async (p: string): Promise<{ size: number; mtimeMs: number } | null> => {
  try {
    const st = await fsp.stat(p);
    return st.isFile() ? { size: st.size, mtimeMs: st.mtimeMs } : null;
  } catch {
    return null;
  }
};

/**
 * Deletes the images of markers past their age. An image whose VM is registered here is left
 * alone (only its marker goes): that path may be the VM's real disk by now.
 */
export async function sweepKeptImages(dataDir: string, registered: ReadonlySet<string>): Promise<number> {
  let n = 0;
  for (const m of await expiredMarkers(dataDir)) {
    if (registered.has(m.vmId)) continue;
    await fsp.rm(m.path, { force: true });
    n++;
  }
  return n;
}

/**
 * Prepare's answer for each disk that has a kept image or an offer: resume (the image is
 * taken over) or why not (a kept image that cannot be used is deleted now, with its marker).
 */
export async function answerOffers(
  dataDir: string,
  vmId: string,
  source: string,
  st: Storage,
  nowMs = Date.now(),
): Promise<KeptAnswer[]> {
  const out: KeptAnswer[] = [];
  for (const d of st.disks) {
    const marker = await readMarker(dataDir, vmId, d.id);
    const offer = st.resume?.find((o) => o.diskId === d.id);
    if (!marker && !offer) continue;
    let v: Verdict;
    if (!offer) v = { resume: false, why: "the source has no record of what was copied to this host's copy" };
    else if (
      offer.vmId !== vmId ||
      offer.source !== source ||
      offer.path !== d.path ||
      offer.format !== d.format ||
      offer.virtualSizeBytes !== d.virtualSizeBytes ||
      offer.moveKey !== st.resumeKey
    )
      v = { resume: false, why: 'the offer does not match the disk the move creates' };
    else v = checkKeptImage(marker, offer, await statOf(d.path), nowMs);
    // Only the copy's own source may have it deleted: another host's Prepare naming this VM
    // (it may be hostile) leaves it to its source's retry or the 24 h sweep.
    if (!v.resume && marker && marker.source === source) {
      await fsp.rm(marker.path, { force: true });
      await dropMarker(dataDir, vmId, d.id);
    }
    out.push({ diskId: d.id, ...v });
  }
  return out;
}

/** The marker of a disk taken over is dropped: the image belongs to the move now (its undo keeps it again). */
export async function takeOver(dataDir: string, vmId: string, diskId: string): Promise<void> {
  await dropMarker(dataDir, vmId, diskId);
}

/**
 * The undo of a resumable move's disks: each image still there is kept with a fresh marker;
 * returns those kept (the undo deletes the others it created). Never over another copy's marker
 * of the same VM disk: markers are per VM disk, and a host naming another host's VM in a move of
 * its own (it may be hostile) would orphan that host's kept copy (no marker names it, so no
 * retry resumes it and no sweep deletes it; the retry meets a file at its path and fails).
 */
export async function keepImages(dataDir: string, keep: readonly KeepEntry[]): Promise<KeepEntry[]> {
  const kept: KeepEntry[] = [];
  for (const k of keep) {
    if (!(await statOf(k.path))) continue;
    const other = await readMarker(dataDir, k.vmId, k.diskId);
    if (other && (other.source !== k.source || other.path !== k.path)) continue;
    await keepImage(dataDir, k);
    kept.push(k);
  }
  return kept;
}

/** What the disks step records for a resumable move (null: the move is not resumable). */
export function keepEntries(st: Storage, vmId: string, source: string): KeepEntry[] | null {
  const key = st.resumeKey;
  if (!key) return null;
  return st.disks
    .filter((d): d is typeof d & { format: 'qcow2' | 'raw' } => d.format === 'qcow2' || d.format === 'raw')
    .map((d) => ({
      moveKey: key,
      vmId,
      source,
      diskId: d.id,
      path: d.path,
      virtualSizeBytes: d.virtualSizeBytes,
      format: d.format,
    }));
}
