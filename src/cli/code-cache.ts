// V8's code cache for the CLI's CommonJS bundle (launch.ts runs a command through it).
// Why: compiling the bundle's modules was a fifth of a command's CPU, and Node 20 has no
// compile cache for ES modules (module.enableCompileCache is Node 22's); with V8's cache
// `vm list` and `move-vm` cost ~50-60 ms of CPU less (docs/performance.md).
// The cache is per user and per command word (`vm`, `move-vm`…: each warms the functions it
// runs), in $FERRY_CODE_CACHE or $XDG_CACHE_HOME/ferry (~/.cache/ferry); FERRY_CODE_CACHE=off
// turns it off. V8 checks a cache against the source's length and its own version and flags,
// and rejects a stale one; the file's name also carries the bundle's path, size and time and
// Node's version, and a new build's first run removes the files of the build before. A folder
// another user could write is not used: a cache is code.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import vm from 'node:vm';
import { createRequire } from 'node:module';

const WORD = /^[a-z][a-z-]{0,31}$/;
const MAX_FILES = 128;

/**
 * The command word a cache is kept for: the first argument that looks like one (options and
 * values such as paths are skipped), else `help`.
 */
export function commandWord(args: string[]): string {
  return args.find((a) => WORD.test(a)) ?? 'help';
}

/**
 * Is `dir` a folder only this user (or root) can change, reached through such folders? Each
 * level up to `/` is checked without following links: owned by root or by us, and not writable
 * by others unless sticky (/tmp: others cannot rename what we own there). Under `sudo -E` a
 * HOME of another user fails here, and root uses no cache.
 */
export function safeFolder(dir: string): boolean {
  const me = typeof process.geteuid === 'function' ? process.geteuid() : 0;
  let cur = path.resolve(dir);
  for (;;) {
    const st = fs.lstatSync(cur);
    if (!st.isDirectory() || (st.uid !== me && st.uid !== 0)) return false;
    if (cur === path.resolve(dir) ? (st.mode & 0o077) !== 0 : (st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0)
      return false;
    const up = path.dirname(cur);
    if (up === cur) return true;
    cur = up;
  }
}

/** The cache folder, made 0700 if missing; null when off or not safely ours (safeFolder). */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string | null {
  const set = env.FERRY_CODE_CACHE;
  if (set === 'off') return null;
  const dir = set || path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'ferry');
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    return safeFolder(dir) ? dir : null;
  } catch {
    return null;
  }
}

/** The cache file's bytes, read through a descriptor opened without links and checked as ours. */
function readCache(file: string): Buffer | undefined {
  let fd: number | null = null;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    const st = fs.fstatSync(fd);
    const me = typeof process.geteuid === 'function' ? process.geteuid() : st.uid;
    if (!st.isFile() || st.uid !== me || (st.mode & 0o077) !== 0) return undefined;
    return fs.readFileSync(fd);
  } catch {
    return undefined;
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

/**
 * 48 bits of two FNV-1a hashes of `s`, as 12 hex digits: a file name, not a secret (the folder is
 * this user's alone, safeFolder). Not node:crypto, whose loading alone was ~4 ms of `--help`'s CPU.
 */
export function nameHash(s: string): string {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x01000193) ^ (b >>> 13);
  }
  return ((a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0')).slice(0, 12);
}

/** Runs `bundle` (a CommonJS file) with its code cache; writes the cache at exit when it had none. */
export function runCached(bundle: string, word: string): void {
  const source = fs.readFileSync(bundle, 'utf8');
  const dir = cacheDir();
  const st = fs.statSync(bundle);
  // Per bundle (two checkouts keep their own) and Node's options, NODE_OPTIONS's too (V8's are
  // part of what it checks: a launcher with other options keeps its own files instead of
  // rejecting another's at every start), then per build of it and runtime. V8 checks only the
  // source's length: the inode and change time tell a rebuilt or reinstalled bundle of the same
  // size and (a package's clamped) modification time.
  const where = nameHash(`${bundle}\0${process.execArgv.join(' ')}\0${process.env.NODE_OPTIONS ?? ''}`);
  const build = `${st.size}:${st.mtimeMs}:${st.ctimeMs}:${st.ino}:${process.version}:${process.arch}`;
  const key = `${where}-${nameHash(build)}`;
  const file = dir ? path.join(dir, `code-${key}-${word}.bin`) : null;
  const cachedData = file ? readCache(file) : undefined;
  // Strict, as the ES module bundle is: esbuild's own "use strict" comes after the banner.
  const wrapped = `(function (exports, require, module, __filename, __dirname) {"use strict";${source}\n})`;
  const script = new vm.Script(wrapped, { filename: bundle, cachedData });
  if (dir && file && (!cachedData || script.cachedDataRejected))
    // At exit: the cache then holds every function the command compiled, not only the top level.
    process.once('exit', () => saveCache(script, dir, file, where, key));
  const fn = script.runInThisContext() as (...args: unknown[]) => void;
  const mod = { exports: {} };
  fn.call(mod.exports, mod.exports, createRequire(bundle), mod, bundle, path.dirname(bundle));
}

function saveCache(script: vm.Script, dir: string, file: string, where: string, key: string): void {
  try {
    const mine = `code-${key}-`;
    const now = Date.now();
    const files = fs
      .readdirSync(dir)
      .filter((f) => f.startsWith('code-'))
      .map((f) => ({ f, at: fs.lstatSync(path.join(dir, f)).mtimeMs }));
    const gone = (f: string): void => fs.rmSync(path.join(dir, f), { force: true });
    // This bundle's older builds, and temp files a crash left, go.
    const keep = files.filter(({ f, at }) => {
      const old = (f.startsWith(`code-${where}-`) && !f.startsWith(mine)) || (f.endsWith('.tmp') && now - at > 60_000);
      if (old) gone(f);
      return !old;
    });
    // Bounded: the least recently written go first (other checkouts, words seldom used).
    keep.sort((a, b) => a.at - b.at);
    for (const old of keep.slice(0, Math.max(0, keep.length - MAX_FILES + 1))) gone(old.f);
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, script.createCachedData(), { mode: 0o600, flag: 'wx' });
    fs.renameSync(tmp, file);
  } catch {
    // A cache is only a speed-up: a full disk or a read-only home changes nothing else.
  }
}
