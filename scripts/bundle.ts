// Bundles the CLI and agent for the Debian package: ESM with every pure-JS dependency inside,
// native modules left external (they ship in node_modules beside it). Split at each dynamic
// import(): the entry holds what builds the program, and a command loads the chunks it uses
// (`ferry --help` does not parse the agent, etcd or the API's schemas: 5.9 MB in one file).
// Usage: tsx scripts/bundle.ts OUT_DIR  → OUT_DIR/cli.mjs and its chunks OUT_DIR/cli-*.mjs,
// OUT_DIR/cli.cjs and OUT_DIR/launch.cjs (the command's entry), OUT_DIR/heavy.cjs (what only some
// commands load),
// OUT_DIR/proto/etcd3/*.proto, and on stdout JSON naming the native, optional (absent) and
// bundled packages (for licences).
import fs from 'node:fs';
import { isBuiltin } from 'node:module';
import path from 'node:path';
import { build, type Plugin } from 'esbuild';

/** Native modules: loaded from OUT_DIR/node_modules at run time. */
const NATIVE = ['better-sqlite3', 'koffi'];

const out = process.argv[2];
if (!out) {
  process.stderr.write('usage: tsx scripts/bundle.ts OUT_DIR\n');
  process.exit(2);
}
const root = path.resolve(import.meta.dirname, '..');

// etcd3 loads its gRPC definitions from `${__dirname}/../proto/rpc.proto` when it is first
// imported; in the bundle they sit in proto/etcd3/ beside cli.mjs.
const etcdProto: Plugin = {
  name: 'etcd3-proto',
  setup(b) {
    b.onLoad({ filter: /[\\/]etcd3[\\/]lib[\\/]connection-pool\.js$/ }, (args) => {
      const src = fs.readFileSync(args.path, 'utf8');
      const from = '`${__dirname}/../proto/rpc.proto`';
      if (!src.includes(from)) throw new Error(`etcd3 changed: ${args.path} no longer loads ${from}`);
      return { contents: src.replace(from, '`${__ferryDir}/proto/etcd3/rpc.proto`'), loader: 'js' };
    });
  },
};

/** What every build here shares: Node 20, every pure-JS dependency inside. */
const base = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  legalComments: 'none',
  logLevel: 'warning',
} as const;
const cli = path.join(root, 'src/cli/main.ts');

const result = await build({
  ...base,
  entryPoints: [cli],
  format: 'esm',
  outdir: out,
  splitting: true,
  entryNames: 'cli',
  chunkNames: 'cli-[name]-[hash]',
  outExtension: { '.js': '.mjs' },
  external: NATIVE,
  plugins: [etcdProto],
  metafile: true,
  // Bundled CommonJS calls require() for Node's own modules; ESM has none, so make one (in
  // every chunk: each is a module of its own).
  banner: {
    js: [
      "import { createRequire as __ferryCreateRequire } from 'node:module';",
      "import { fileURLToPath as __ferryFileURLToPath } from 'node:url';",
      'const require = __ferryCreateRequire(import.meta.url);',
      "const __ferryDir = __ferryFileURLToPath(new URL('.', import.meta.url));",
    ].join('\n'),
  },
});

// The same CLI as one CommonJS file (import() made require()), and the entry that runs a
// command from it with V8's code cache (src/cli/code-cache.ts); the agent keeps the ESM bundle.
// Read at every command's start, so: without whitespace and comments (a third smaller, and ASCII:
// a comment's one '…' made V8 hold the whole source as a two-byte string), and without the
// packages only some commands load (etcd's client, the HTTP server, XML: the ones scripts/setup
// leaves in node_modules for a checkout), which go to heavy.cjs beside it, loaded by the first
// command that requires one of them (scripts/heavy-packages). `ferry --help` read 4.4 MB, now 0.64.
const heavyNames = fs
  .readFileSync(path.join(root, 'scripts/heavy-packages'), 'utf8')
  .split('\n')
  .filter((l) => l && !l.startsWith('#'))
  .map((n) => n.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\/\*$/, '/[^/]+'));
const HEAVY = new RegExp(`^(${heavyNames.join('|')})(/.*)?$`);
const heavyUsed = new Set<string>();
const heavyApart: Plugin = {
  name: 'heavy-apart',
  setup(b) {
    b.onResolve({ filter: HEAVY }, (args) => {
      heavyUsed.add(args.path);
      return { path: args.path, namespace: 'ferry-heavy' };
    });
    b.onLoad({ filter: /.*/, namespace: 'ferry-heavy' }, (args) => ({
      contents: `module.exports = require(__ferryDir + '/heavy.cjs')(${JSON.stringify(args.path)});`,
      loader: 'js',
    }));
  },
};
const cjs = {
  ...base,
  format: 'cjs',
  supported: { 'dynamic-import': false },
  define: { 'import.meta.url': '__ferryUrl' },
  minifyWhitespace: true,
  banner: {
    js: [
      "const __ferryUrl = require('node:url').pathToFileURL(__filename).href;",
      'const __ferryDir = __dirname;',
    ].join('\n'),
  },
} as const;
await build({
  ...cjs,
  entryPoints: [cli],
  outfile: path.join(out, 'cli.cjs'),
  // The daemons run from the ES module bundle (src/cli/launch.ts): their code is left out here.
  external: [...NATIVE, '../../agent/main.js', '../../console/main.js', '../../cluster/fence.js'],
  plugins: [heavyApart],
});
// One loader per package the commands require, each run only when first asked for.
const loaders = [...heavyUsed].sort().map((p) => `  ${JSON.stringify(p)}: () => require(${JSON.stringify(p)}),`);
await build({
  ...cjs,
  stdin: {
    contents:
      `const load = {\n${loaders.join('\n')}\n};\n` +
      'module.exports = Object.assign((name) => load[name](), { names: Object.keys(load) });\n',
    resolveDir: root,
    loader: 'js',
  },
  outfile: path.join(out, 'heavy.cjs'),
  external: NATIVE,
  plugins: [etcdProto],
});
for (const f of ['cli.cjs', 'heavy.cjs']) {
  const nonAscii = fs.readFileSync(path.join(out, f)).findIndex((b) => b > 0x7f);
  if (nonAscii >= 0) throw new Error(`${f} is not ASCII at byte ${nonAscii}: V8 would hold it as a two-byte string`);
}
await build({
  ...base,
  entryPoints: [path.join(root, 'src/cli/launch.ts')],
  format: 'cjs',
  outfile: path.join(out, 'launch.cjs'),
});

const protoDir = path.join(out, 'proto', 'etcd3');
fs.mkdirSync(protoDir, { recursive: true });
for (const f of ['rpc.proto', 'kv.proto', 'auth.proto'])
  fs.copyFileSync(path.join(root, 'node_modules/etcd3/proto', f), path.join(protoDir, f));

const outputs = Object.values(result.metafile.outputs);
if (!outputs.length) throw new Error('esbuild wrote no output');
const output = {
  imports: outputs.flatMap((o) => o.imports),
  inputs: Object.assign({}, ...outputs.map((o) => o.inputs)) as Record<string, unknown>,
};
// Every package the bundle still imports must ship in node_modules (NATIVE), or be an
// optional one that is not installed at all (its callers cope without it, e.g. debug's
// supports-color): anything else would fail on the host.
const external = [
  ...new Set(
    output.imports
      .filter((i) => i.external && !isBuiltin(i.path))
      .map((i) =>
        i.path.startsWith('@') ? i.path.split('/').slice(0, 2).join('/') : (i.path.split('/')[0] ?? i.path),
      ),
  ),
].sort();
const optional = external.filter((p) => !NATIVE.includes(p));
for (const p of optional) {
  if (fs.existsSync(path.join(root, 'node_modules', p)))
    throw new Error(`the bundle imports ${p} at run time: bundle it or add it to NATIVE in scripts/bundle.ts`);
}
const bundled = new Map<string, string>();
for (const input of Object.keys(output.inputs)) {
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
  if (!m?.[1] || bundled.has(m[1])) continue;
  const pj = JSON.parse(
    fs.readFileSync(path.join(root, input.slice(0, input.indexOf(m[1]) + m[1].length), 'package.json'), 'utf8'),
  ) as { version?: string; license?: string };
  bundled.set(m[1], `${pj.version ?? '?'} ${pj.license ?? 'see its package'}`);
}
process.stdout.write(
  JSON.stringify({
    native: NATIVE,
    optional,
    bundled: Object.fromEntries([...bundled].sort(([a], [b]) => a.localeCompare(b))),
  }) + '\n',
);
