// Where a destination keeps the markers of cut moves' partial images (issue 17 item 6): one
// JSON file per VM disk under the agent's data directory (not in the VM folder: a shared pool's
// folder may be written by other hosts, and the marker decides whether data is trusted).
// The image itself stays where Prepare made it; the marker names it.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../util/atomic-file.js';
import { keptExpired, ResumeMarker } from './resume-marker.js';

const DIR = 'resume';
/**
 * A storage move's kept copies (kinds/storage-resume.ts): the same markers, in their own folder,
 * since that VM is registered on this host and its sweep rules differ.
 */
export const STORAGE_DIR = 'resume-storage';

const markerFile = (dataDir: string, vmId: string, diskId: string, dir: string): string =>
  path.join(dataDir, dir, `${vmId}--${diskId}.json`);

/** Records that the image at `m.path` is kept for a retry; the file's size and mtime are read now. */
export async function keepImage(
  dataDir: string,
  m: Omit<ResumeMarker, 'keptAt' | 'fileSize' | 'fileMtimeMs'>,
  now = new Date(),
  dir = DIR,
): Promise<ResumeMarker> {
  const st = await fsp.stat(m.path);
  const marker = ResumeMarker.parse({ ...m, keptAt: now.toISOString(), fileSize: st.size, fileMtimeMs: st.mtimeMs });
  await fsp.mkdir(path.join(dataDir, dir), { recursive: true, mode: 0o700 });
  await writeFileAtomic(markerFile(dataDir, m.vmId, m.diskId, dir), JSON.stringify(marker), { sync: true });
  return marker;
}

/** The marker of a VM disk, or null (none, or one that does not parse: never trusted). */
export async function readMarker(
  dataDir: string,
  vmId: string,
  diskId: string,
  dir = DIR,
): Promise<ResumeMarker | null> {
  try {
    const raw: unknown = JSON.parse(await fsp.readFile(markerFile(dataDir, vmId, diskId, dir), 'utf8'));
    const r = ResumeMarker.safeParse(raw);
    return r.success ? r.data : null;
  } catch {
    return null;
  }
}

/** Forgets a VM disk's kept image (used, or the VM went elsewhere). The image is its owner's to delete. */
export async function dropMarker(dataDir: string, vmId: string, diskId: string, dir = DIR): Promise<void> {
  await fsp.rm(markerFile(dataDir, vmId, diskId, dir), { force: true });
}

/** Every marker of a VM (one per kept disk). */
export async function markersOf(dataDir: string, vmId: string, dir = DIR): Promise<ResumeMarker[]> {
  const names = await fsp.readdir(path.join(dataDir, dir)).catch(() => [] as string[]);
  const out: ResumeMarker[] = [];
  for (const n of names.filter((x) => x.startsWith(`${vmId}--`) && x.endsWith('.json'))) {
    const m = await readMarker(dataDir, vmId, n.slice(vmId.length + 2, -'.json'.length), dir);
    if (m?.vmId === vmId) out.push(m);
  }
  return out;
}

/** Markers past their age: removed; returns them so their images can be deleted by their owner. */
export async function expiredMarkers(dataDir: string, nowMs = Date.now(), dir = DIR): Promise<ResumeMarker[]> {
  const folder = path.join(dataDir, dir);
  const names = await fsp.readdir(folder).catch(() => [] as string[]);
  const out: ResumeMarker[] = [];
  for (const n of names.filter((x) => x.endsWith('.json'))) {
    const file = path.join(folder, n);
    const r = ResumeMarker.safeParse(JSON.parse(await fsp.readFile(file, 'utf8').catch(() => 'null')) as unknown);
    if (!r.success || keptExpired(r.data.keptAt, nowMs)) {
      if (r.success) out.push(r.data);
      await fsp.rm(file, { force: true });
    }
  }
  return out;
}
