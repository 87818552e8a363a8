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
import crypto from 'node:crypto';
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

/** The cache folder, made 0700 if missing; null when off or not safely ours. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string | null {
  const set = env.FERRY_CODE_CACHE;
  if (set === 'off') return null;
  const dir = set || path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'ferry');
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = fs.lstatSync(dir);
    const mine = typeof process.getuid !== 'function' || st.uid === process.getuid();
    return st.isDirectory() && mine && (st.mode & 0o022) === 0 ? dir : null;
  } catch {
    return null;
  }
}

/** Runs `bundle` (a CommonJS file) with its code cache; writes the cache at exit when it had none. */
export function runCached(bundle: string, word: string): void {
  const source = fs.readFileSync(bundle, 'utf8');
  const dir = cacheDir();
  const st = fs.statSync(bundle);
  // Per bundle (two checkouts keep their own), then per build of it and runtime.
  const hash = (s: string): string => crypto.createHash('sha256').update(s).digest('hex').slice(0, 12);
  const where = hash(bundle);
  const key = `${where}-${hash(`${st.size}:${st.mtimeMs}:${process.version}:${process.arch}`)}`;
  const file = dir ? path.join(dir, `code-${key}-${word}.bin`) : null;
  let cachedData: Buffer | undefined;
  try {
    if (file) cachedData = fs.readFileSync(file);
  } catch {
    cachedData = undefined;
  }
  const wrapped = `(function (exports, require, module, __filename, __dirname) {${source}\n})`;
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
    const files = fs.readdirSync(dir).filter((f) => f.startsWith('code-'));
    // The caches of this bundle's older builds go; this build's are bounded.
    for (const f of files)
      if (f.startsWith(`code-${where}-`) && !f.startsWith(mine)) fs.rmSync(path.join(dir, f), { force: true });
    if (files.length >= MAX_FILES) return;
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, script.createCachedData(), { mode: 0o600, flag: 'wx' });
    fs.renameSync(tmp, file);
  } catch {
    // A cache is only a speed-up: a full disk or a read-only home changes nothing else.
  }
}
