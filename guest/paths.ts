// Where the project's test guests are built (scripts/setup builds them; git ignores the cache).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export function guestCacheDir(): string {
  return process.env.FERRY_GUEST_CACHE ?? path.join(REPO_ROOT, '.cache', 'guests');
}

export interface ProbeGuestFiles { kernel: string; initrd: string }

/** The built Linux probe guest, or null when scripts/setup has not built it. */
export function probeGuestFiles(): ProbeGuestFiles | null {
  const dir = process.env.FERRY_GUEST_DIR ?? path.join(guestCacheDir(), 'probe');
  const kernel = path.join(dir, 'vmlinuz');
  const initrd = path.join(dir, 'initrd.img');
  return fs.existsSync(kernel) && fs.existsSync(initrd) && fs.existsSync(path.join(dir, 'STAMP')) ? { kernel, initrd } : null;
}
