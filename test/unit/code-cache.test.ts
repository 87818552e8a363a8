// The CLI's code cache (src/cli/code-cache.ts): which file a command's cache is, which folders
// are refused, and that a run with a cache, without one, or with a broken one runs the same code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { cacheDir, commandWord, nameHash } from '../../src/cli/code-cache.js';
import { REPO_ROOT } from '../../guest/paths.js';
import { tempDir } from '../helpers.js';

test('code cache: the command word skips options and their values', () => {
  assert.equal(commandWord(['vm', 'list']), 'vm');
  assert.equal(commandWord(['--lab', '/tmp/x', 'move-vm', 'p1', '--to', 'b']), 'move-vm');
  assert.equal(commandWord(['--help']), 'help');
  assert.equal(commandWord([]), 'help');
  assert.equal(commandWord(['../../etc', 'vm']), 'vm', 'never a path in a file name');
});

test('code cache: the folder is made private; off, or one others may write, is not used', async (t) => {
  const dir = await tempDir(t);
  const c = path.join(dir, 'c');
  assert.equal(cacheDir({ FERRY_CODE_CACHE: c }), c);
  assert.equal((await fs.stat(c)).mode & 0o777, 0o700);
  assert.equal(cacheDir({ FERRY_CODE_CACHE: 'off' }), null);
  await fs.chmod(c, 0o777);
  assert.equal(cacheDir({ FERRY_CODE_CACHE: c }), null, 'a folder others may write');
  await fs.symlink(dir, path.join(dir, 'link'));
  assert.equal(cacheDir({ FERRY_CODE_CACHE: path.join(dir, 'link') }), null, 'a link');
  assert.equal(cacheDir({ XDG_CACHE_HOME: path.join(dir, 'xdg') }), path.join(dir, 'xdg', 'ferry'));
  // A private folder under one others may write (a HOME kept by `sudo -E`, say): not used.
  const open = path.join(dir, 'open');
  await fs.mkdir(open);
  await fs.chmod(open, 0o777);
  assert.equal(cacheDir({ FERRY_CODE_CACHE: path.join(open, 'c') }), null);
  // Sticky, as /tmp: others cannot rename what is ours there.
  await fs.chmod(open, 0o1777);
  assert.equal(cacheDir({ FERRY_CODE_CACHE: path.join(open, 'c') }), path.join(open, 'c'));
});

test('code cache: a bundle runs the same with no cache, its cache, and a broken one', async (t) => {
  const dir = await tempDir(t);
  const bundle = path.join(dir, 'b.cjs');
  await fs.writeFile(
    bundle,
    'const os = require("node:os");\n' +
      'function work(n) { let s = 0; for (let i = 0; i < n; i++) s += i; return s; }\n' +
      'const strict = (function () { return this; })() === undefined;\n' +
      'console.log(JSON.stringify([work(1000), typeof os.cpus, path(), module === require.main, strict]));\n' +
      'function path() { return __filename + "|" + __dirname; }\n',
  );
  const cache = path.join(dir, 'cache');
  const mod = JSON.stringify(path.join(REPO_ROOT, 'src/cli/code-cache.ts'));
  const script = `import(${mod}).then((m) => m.runCached(${JSON.stringify(bundle)}, 'vm'))`;
  const run = (nodeOptions: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<string> =>
    new Promise((resolve, reject) =>
      execFile(
        process.execPath,
        [...nodeOptions, '--import', 'tsx', '-e', script],
        { cwd: REPO_ROOT, env: { ...process.env, FERRY_CODE_CACHE: cache, ...env } },
        (err, stdout, stderr) => (err ? reject(new Error(stderr)) : resolve(stdout)),
      ),
    );
  const want = `${JSON.stringify([499500, 'function', `${bundle}|${dir}`, false, true])}\n`;
  assert.equal(await run(), want);
  const files = await fs.readdir(cache);
  assert.equal(files.length, 1);
  assert.match(files[0] ?? '', /^code-[0-9a-f]{12}-[0-9a-f]{12}-vm\.bin$/);
  const file = path.join(cache, files[0] ?? '');
  const made = (await fs.stat(file)).mtimeMs;
  assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
  // With its cache: the same output, and the cache is not written again.
  assert.equal(await run(), want);
  assert.equal((await fs.stat(file)).mtimeMs, made);
  // A broken cache is rejected by V8: the same output, and a good cache replaces it.
  await fs.writeFile(file, Buffer.alloc(4096, 7));
  assert.equal(await run(), want);
  assert.notDeepEqual(await fs.readFile(file), Buffer.alloc(4096, 7));
  // A new build of the bundle: its first run removes the old build's cache.
  await fs.appendFile(bundle, '// changed\n');
  assert.equal(await run(), want);
  const after = await fs.readdir(cache);
  assert.equal(after.length, 1);
  assert.notEqual(after[0], files[0]);
  // Other Node options, on the command line or in NODE_OPTIONS (V8's flags are part of its
  // check): a file of their own, and no launcher's cache is rewritten by another's runs.
  const other = ['--min-semi-space-size=16'];
  const otherEnv = { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --max-old-space-size=3000` };
  assert.equal(await run(other), want);
  assert.equal(await run([], otherEnv), want);
  const all = await fs.readdir(cache);
  assert.equal(all.length, 3);
  const times = async (): Promise<number[]> =>
    Promise.all(all.map(async (f) => (await fs.stat(path.join(cache, f))).mtimeMs));
  const before = await times();
  assert.equal(await run(), want);
  assert.equal(await run(other), want);
  assert.equal(await run([], otherEnv), want);
  assert.deepEqual(await times(), before);
});

test('code cache: a file name hash is 12 hex digits, the same for the same text, another for a changed one', () => {
  const a = nameHash('/usr/lib/ferry/cli.cjs');
  assert.match(a, /^[0-9a-f]{12}$/);
  assert.equal(nameHash('/usr/lib/ferry/cli.cjs'), a);
  const builds = ['898860:1:2:3:v20.20.2:x64', '898861:1:2:3:v20.20.2:x64', '898860:1:2:4:v20.20.2:x64', ''];
  assert.equal(new Set(builds.map(nameHash)).size, builds.length);
});
