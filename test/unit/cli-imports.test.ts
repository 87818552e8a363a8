// Which modules a CLI command loads (issue 17: a quiet control plane). The CLI's start-up cost
// is the modules it loads; timing it would make a flaky test, so this test records every
// module a run of the CLI loads (an ESM load hook, and the CommonJS modules in require's
// cache) and checks that a command loads only what it uses: `--help` no more than commander
// and our own code, `vm list` and `move-vm` no etcd, gRPC, fastify or OpenTelemetry.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { REPO_ROOT } from '../../guest/paths.js';
import { tempDir } from '../helpers.js';

// Runs in the CLI's process (given to node with --import): loads go to $FERRY_TEST_MODULES.
const RECORDER = `
import { createRequire, register } from 'node:module';
import fs from 'node:fs';
const out = process.env.FERRY_TEST_MODULES;
const hook = 'import fs from "node:fs";' +
  'export async function load(url, context, next) {' +
  '  fs.appendFileSync(' + JSON.stringify(out) + ', url + "\\\\n");' +
  '  return next(url, context);' +
  '}';
register('data:text/javascript,' + encodeURIComponent(hook));
// Module._cache is one for the process: any absolute path makes a require that sees it.
const require = createRequire(process.argv[1]);
process.on('exit', () => fs.appendFileSync(out, Object.keys(require.cache).join('\\n') + '\\n'));
`;

/** The npm packages a run of the CLI (from its sources, as bin/ferry runs them) loads. */
async function packagesLoaded(dir: string, args: string[]): Promise<Set<string>> {
  const out = path.join(dir, `modules-${args.join('-').replace(/[^a-z-]/g, '')}.txt`);
  const stderr = await new Promise<string>((resolve) => {
    execFile(
      process.execPath,
      [
        '--import',
        `data:text/javascript,${encodeURIComponent(RECORDER)}`,
        '--import',
        'tsx',
        path.join(REPO_ROOT, 'src/cli/main.ts'),
        ...args,
      ],
      // No context anywhere: a command that talks to hosts fails once it has loaded its code.
      { cwd: REPO_ROOT, env: { ...process.env, FERRY_TEST_MODULES: out, XDG_CONFIG_HOME: dir }, timeout: 60_000 },
      (_err, _stdout, err) => resolve(err),
    );
  });
  const loaded = (await fs.readFile(out, 'utf8').catch(() => '')).split('\n').filter(Boolean);
  // tsx's own modules are how the checkout runs TypeScript, not the CLI's (the bundle has none).
  const pkgs = loaded
    .map((m) => /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(m)?.[1])
    .filter((p): p is string => p !== undefined && p !== 'tsx' && p !== 'esbuild' && p !== 'get-tsconfig');
  assert.ok(pkgs.includes('commander'), `the recorder saw the CLI run (${loaded.length} modules): ${stderr}`);
  return new Set(pkgs);
}

const NEVER = [
  ...['etcd3', '@grpc/grpc-js', '@grpc/proto-loader', 'protobufjs', 'fastify', 'pino'],
  ...['better-sqlite3', 'koffi'],
];
const none = (loaded: Set<string>, bad: string[], what: string): void => {
  const hit = [...loaded].filter(
    (p) => bad.includes(p) || p.startsWith('@opentelemetry/') || p.startsWith('@fastify/'),
  );
  assert.deepEqual(hit, [], `${what} loads ${hit.join(', ')}`);
};

test('ferry --help and a command’s --help load commander and nothing else of node_modules', async (t) => {
  const dir = await tempDir(t);
  for (const args of [['--help'], ['vm', 'list', '--help'], ['move-vm', '--help'], ['--version']]) {
    const loaded = await packagesLoaded(dir, args);
    assert.deepEqual(
      [...loaded].filter((p) => p !== 'commander' && p !== '@commander-js/extra-typings'),
      [],
      `ferry ${args.join(' ')}`,
    );
  }
});

test('vm list and move-vm load the client and the API, not etcd, gRPC, fastify or OpenTelemetry', async (t) => {
  const dir = await tempDir(t);
  for (const args of [
    ['vm', 'list'],
    ['move-vm', 'v', '--to', 'b'],
    ['migration', 'list'],
  ]) {
    const loaded = await packagesLoaded(dir, args);
    assert.ok(loaded.has('zod'), `ferry ${args.join(' ')} got as far as loading the API's schemas`);
    none(loaded, [...NEVER, 'ws', 'fast-xml-parser', 'fast-xml-validator'], `ferry ${args.join(' ')}`);
  }
});
