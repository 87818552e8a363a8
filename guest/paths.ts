// Where the project's test guests are built (scripts/setup builds them; git ignores the cache).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// This file runs from guest/ (tsx) or bundled into dist/cli.mjs: both sit one level below the root.
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * How to run the CLI (the program, then its arguments): the bundle when it is up to date
 * (fast start), else the sources via tsx.
 */
export function cliCommand(): [string, ...string[]] {
  const bundle = path.join(REPO_ROOT, 'dist', 'cli.mjs');
  if (
    fs.existsSync(bundle) &&
    !process.env.FERRY_FROM_SOURCE &&
    !newerThan(fs.statSync(bundle).mtimeMs, [path.join(REPO_ROOT, 'src'), path.join(REPO_ROOT, 'guest')])
  ) {
    return [process.execPath, bundle];
  }
  return [
    process.execPath,
    '--import',
    `file://${path.join(REPO_ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')}`,
    path.join(REPO_ROOT, 'src', 'cli', 'main.ts'),
  ];
}

export function guestCacheDir(): string {
  return process.env.FERRY_GUEST_CACHE ?? path.join(REPO_ROOT, '.cache', 'guests');
}

export interface ProbeGuestFiles {
  kernel: string;
  initrd: string;
}

/** The built Linux probe guest, or null when scripts/setup has not built it. */
export function probeGuestFiles(): ProbeGuestFiles | null {
  const dir = process.env.FERRY_GUEST_DIR ?? path.join(guestCacheDir(), 'probe');
  const kernel = path.join(dir, 'vmlinuz');
  const initrd = path.join(dir, 'initrd.img');
  return fs.existsSync(kernel) && fs.existsSync(initrd) && fs.existsSync(path.join(dir, 'STAMP'))
    ? { kernel, initrd }
    : null;
}

/** The built Debian 12 test guest's disk (qcow2, BIOS and UEFI), or null when scripts/setup has not built it. */
export function debianGuestImage(): string | null {
  const dir = debianGuestDir();
  const image = path.join(dir, 'debian.qcow2');
  return fs.existsSync(image) && fs.existsSync(path.join(dir, 'STAMP')) ? image : null;
}

/** Where guest/debian/build.sh keeps the Debian guest (FERRY_DEBIAN_GUEST_DIR overrides). */
export function debianGuestDir(): string {
  return process.env.FERRY_DEBIAN_GUEST_DIR ?? path.join(guestCacheDir(), 'debian');
}

/** Is any .ts file under `dirs` newer than `ms`? (a stale bundle must not run edited code) */
function newerThan(ms: number, dirs: string[]): boolean {
  for (const d of dirs) {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory() ? newerThan(ms, [p]) : e.name.endsWith('.ts') && fs.statSync(p).mtimeMs > ms) return true;
    }
  }
  return false;
}
