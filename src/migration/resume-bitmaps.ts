// The source's half of a cut resumable copy (issue 17 item 6): the persistent dirty bitmap
// `ferry-resume-<key>` on the VM's disks. Every write of the guest updates it, so one that no
// retry will use must not stay. Two rules (docs/moves.md, "The bitmap's life"):
//  - a move of the VM drops, at its Begin, every Ferry bitmap but the one it resumes from
//    (none when it copies by the mirror, by qemu-img, or goes to another host: their copies
//    can no longer be resumed from here);
//  - a sweep (agent start, VM start) drops those whose mark is older than the destination
//    markers' age (RESUME_MAX_AGE_MS, keptExpired), has none, or QEMU says are inconsistent.
// The mark is the source's counterpart of the destination's marker: one small file per VM and
// bitmap under `<data>/resume-bitmaps/`, written when a move adds or keeps the bitmap, so both
// halves of a copy expire together; the destination's kept image is swept at the same age.
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as z from 'zod';
import { listBitmapsHeld, removeBitmapHeld } from '../qemu/img-files.js';
import type { PoolDef } from '../storage/pools.js';
import type { QmpClient } from '../qemu/qmp.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { keptExpired, ResumeKey } from './resume-marker.js';

export const RESUME_BITMAP_PREFIX = 'ferry-resume-';

const DIR = 'resume-bitmaps';

/** A bitmap of Ferry's naming whose name is safe in a file name (what moveKeyOf makes is). */
export function isResumeBitmap(name: string): boolean {
  return name.startsWith(RESUME_BITMAP_PREFIX) && ResumeKey.safeParse(name.slice(RESUME_BITMAP_PREFIX.length)).success;
}

export interface FoundBitmap {
  name: string;
  /** QEMU could not save or load it whole: no resume can use it. */
  inconsistent?: boolean;
}

/** At a move's Begin: every Ferry bitmap but `keep` (the one this move resumes from; null: none). */
export function bitmapsLeftBehind(found: readonly FoundBitmap[], keep: string | null): string[] {
  return found.filter((b) => isResumeBitmap(b.name) && b.name !== keep).map((b) => b.name);
}

/**
 * At a sweep: Ferry bitmaps past the destination markers' age (keptExpired), without a mark (an
 * unknown age: left by a Ferry before marks, or a host that never moved the VM), or inconsistent.
 */
export function expiredBitmaps(
  found: readonly FoundBitmap[],
  marks: ReadonlyMap<string, string>,
  nowMs: number,
): string[] {
  return found
    .filter((b) => {
      if (!isResumeBitmap(b.name)) return false;
      const kept = marks.get(b.name);
      return b.inconsistent === true || kept === undefined || keptExpired(kept, nowMs);
    })
    .map((b) => b.name);
}

const Mark = z.object({ vmId: ResumeKey, bitmap: z.string().max(256), keptAt: z.string().max(64) }).strict();

const markFile = (dataDir: string, vmId: string, bitmap: string): string =>
  path.join(dataDir, DIR, `${vmId}--${bitmap}.json`);

const safe = (vmId: string, bitmap: string): boolean =>
  ResumeKey.safeParse(vmId).success && !vmId.startsWith('.') && isResumeBitmap(bitmap);

async function readMark(file: string): Promise<z.infer<typeof Mark> | null> {
  try {
    const m = Mark.safeParse(JSON.parse(await fsp.readFile(file, 'utf8')) as unknown);
    return m.success ? m.data : null;
  } catch {
    return null;
  }
}

/** The bitmap is kept for a retry from now (a move added it, or a cut left it). */
export async function markBitmap(dataDir: string, vmId: string, bitmap: string, now = new Date()): Promise<void> {
  if (!safe(vmId, bitmap)) return;
  await fsp.mkdir(path.join(dataDir, DIR), { recursive: true, mode: 0o700 });
  const mark: z.infer<typeof Mark> = { vmId, bitmap, keptAt: now.toISOString() };
  await writeFileAtomic(markFile(dataDir, vmId, bitmap), JSON.stringify(mark));
}

export async function unmarkBitmap(dataDir: string, vmId: string, bitmap: string): Promise<void> {
  if (safe(vmId, bitmap)) await fsp.rm(markFile(dataDir, vmId, bitmap), { force: true });
}

/** The marks of a VM's bitmaps: name → keptAt (a mark that does not parse is none). */
export async function bitmapMarks(dataDir: string, vmId: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const names = await fsp.readdir(path.join(dataDir, DIR)).catch(() => [] as string[]);
  for (const n of names.filter((x) => x.startsWith(`${vmId}--`) && x.endsWith('.json'))) {
    const m = await readMark(path.join(dataDir, DIR, n));
    if (m?.vmId === vmId) out.set(m.bitmap, m.keptAt);
  }
  return out;
}

/** Agent start: marks past their age go (their bitmaps, if any are left, have no mark then: a sweep drops them). */
export async function expireMarks(dataDir: string, nowMs = Date.now()): Promise<number> {
  let n = 0;
  const dir = path.join(dataDir, DIR);
  for (const name of (await fsp.readdir(dir).catch(() => [] as string[])).filter((x) => x.endsWith('.json'))) {
    const m = await readMark(path.join(dir, name));
    if (m && !keptExpired(m.keptAt, nowMs)) continue;
    await fsp.rm(path.join(dir, name), { force: true });
    n++;
  }
  return n;
}

/** The Ferry bitmaps on a running QEMU's block nodes. */
export async function foundBitmaps(
  qmp: QmpClient,
  opts: { signal?: AbortSignal } = {},
): Promise<Array<FoundBitmap & { node: string }>> {
  const blocks = await qmp.execute('query-block', undefined, { signal: opts.signal, timeoutMs: 10_000 });
  const out: Array<FoundBitmap & { node: string }> = [];
  for (const b of blocks) {
    const node = b.inserted?.['node-name'];
    if (!node) continue;
    for (const bm of b.inserted?.['dirty-bitmaps'] ?? [])
      if (bm.name && isResumeBitmap(bm.name))
        out.push({ node, name: bm.name, ...(bm.inconsistent ? { inconsistent: true } : {}) });
  }
  return out;
}

/**
 * Removes the named bitmaps from every node of a running QEMU that has them, and their marks.
 * `block-dirty-bitmap-remove` of a persistent bitmap removes it from the qcow2 image too.
 */
async function removeFound(
  qmp: QmpClient,
  dataDir: string,
  vmId: string,
  found: ReadonlyArray<FoundBitmap & { node: string }>,
  names: readonly string[],
  signal?: AbortSignal,
): Promise<void> {
  for (const b of found)
    if (names.includes(b.name))
      await qmp.execute('block-dirty-bitmap-remove', { node: b.node, name: b.name }, { signal, timeoutMs: 10_000 });
  for (const n of names) await unmarkBitmap(dataDir, vmId, n);
}

/** A move's Begin, running VM: drops every Ferry bitmap but `keep`; returns the names dropped. */
export async function dropLeftBehind(
  qmp: QmpClient,
  dataDir: string,
  vmId: string,
  keep: string | null,
  opts: { signal?: AbortSignal } = {},
): Promise<string[]> {
  const found = await foundBitmaps(qmp, opts);
  const names = [...new Set(bitmapsLeftBehind(found, keep))];
  await removeFound(qmp, dataDir, vmId, found, names, opts.signal);
  return names;
}

/** A move's Begin, stopped VM: the same from its qcow2 images (no QEMU has them open). */
export async function dropStoredLeftBehind(
  disks: ReadonlyArray<{ path: string; format: string }>,
  dataDir: string,
  vmId: string,
  keep: string | null,
  opts: { pools: readonly PoolDef[]; signal?: AbortSignal },
): Promise<string[]> {
  const dropped = new Set<string>();
  // Through a handle (qemu/img-files.ts): a disk of a shared pool swapped for a link is refused.
  const held = { ...opts, what: 'a disk of the VM' };
  for (const d of disks) {
    if (d.format !== 'qcow2') continue;
    const names = bitmapsLeftBehind(
      (await listBitmapsHeld(d.path, held)).map((name) => ({ name })),
      keep,
    );
    for (const n of names) {
      await removeBitmapHeld(d.path, n, held);
      dropped.add(n);
    }
  }
  for (const n of dropped) await unmarkBitmap(dataDir, vmId, n);
  return [...dropped];
}

/** VM start and agent start: drops the VM's expired Ferry bitmaps (expiredBitmaps); returns their names. */
export async function sweepBitmaps(
  qmp: QmpClient,
  dataDir: string,
  vmId: string,
  opts: { signal?: AbortSignal; nowMs?: number } = {},
): Promise<string[]> {
  const found = await foundBitmaps(qmp, opts);
  if (!found.length) return [];
  const names = [...new Set(expiredBitmaps(found, await bitmapMarks(dataDir, vmId), opts.nowMs ?? Date.now()))];
  await removeFound(qmp, dataDir, vmId, found, names, opts.signal);
  return names;
}

/** Why a sweep drops a bitmap. */
export const SWEEP_WHY = 'older than a kept copy lives (24 h), of unknown age, or inconsistent';

/** What a sweep or a Begin says it dropped (for the VM's events or the move's log). */
export function droppedLine(names: readonly string[], why: string): string {
  return `removed ${names.length === 1 ? 'the bitmap' : 'the bitmaps'} ${names.join(', ')} of a cut copy: ${why}`;
}
