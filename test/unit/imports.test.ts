// The shape of the code (issue 12): no import circle in src/, migration and cluster code that
// does not depend on the agent, and no line over 120 characters in src/ or web/src/.
// Imports are read with the TypeScript compiler's pre-processor (ts.preProcessFile), which
// sees static imports, `export … from`, dynamic `import('…')` and `import('…')` types, and
// never text inside comments or strings. Type-only imports count like any other: they are
// still a dependency between two modules (one cannot be read, moved or changed without the
// other), and a value import along the same path turns a type circle into a run-time one.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';
import { REPO_ROOT } from '../../guest/paths.js';

const MAX_LINE = 120;

type Graph = Map<string, string[]>;

/** Every module specifier a file imports or re-exports, type-only and dynamic ones included. */
function specifiersOf(text: string): string[] {
  return ts.preProcessFile(text, true, true).importedFiles.map((f) => f.fileName);
}

function filesUnder(dir: string, exts: readonly string[]): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p, exts));
    else if (exts.some((x) => e.name.endsWith(x))) out.push(p);
  }
  return out.sort();
}

/** The file a relative specifier names: './x.js' is './x.ts' under NodeNext resolution. */
function resolveSpecifier(from: string, spec: string): string | null {
  const abs = path.resolve(path.dirname(from), spec);
  const candidates = /\.m?js$/.test(abs)
    ? [abs.replace(/\.js$/, '.ts').replace(/\.mjs$/, '.mts'), abs.replace(/\.js$/, '.tsx'), abs]
    : [abs, `${abs}.ts`, `${abs}.tsx`, path.join(abs, 'index.ts')];
  return candidates.find((c) => fs.existsSync(c) && fs.statSync(c).isFile()) ?? null;
}

const isModule = (f: string): boolean => /\.(m?ts|tsx)$/.test(f);
const rel = (f: string): string => path.relative(REPO_ROOT, f);

/**
 * The import graph of every module under src/, followed into the rest of the repository
 * (guest/, …) so that a circle leaving src/ and coming back is seen too. Bare specifiers
 * (packages, node:) are not part of it. Unresolvable relative imports are returned apart.
 */
function importGraph(): { graph: Graph; unresolved: string[] } {
  const graph: Graph = new Map();
  const unresolved: string[] = [];
  const todo = filesUnder(path.join(REPO_ROOT, 'src'), ['.ts']);
  for (let f = todo.pop(); f !== undefined; f = todo.pop()) {
    if (graph.has(f)) continue;
    const deps = new Set<string>();
    for (const spec of specifiersOf(fs.readFileSync(f, 'utf8'))) {
      if (!spec.startsWith('.')) continue;
      const target = resolveSpecifier(f, spec);
      if (target === null) unresolved.push(`${rel(f)}: '${spec}'`);
      else if (isModule(target)) deps.add(target);
    }
    graph.set(f, [...deps].sort());
    todo.push(...deps);
  }
  return { graph, unresolved };
}

let built: ReturnType<typeof importGraph> | undefined;
const srcGraph = (): ReturnType<typeof importGraph> => (built ??= importGraph());

/** Strongly connected components (Tarjan), each a set of nodes that reach one another. */
function components(graph: Graph): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next);
    next++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      const wIndex = index.get(w);
      if (wIndex === undefined) {
        visit(w);
        low.set(v, Math.min(low.get(v) ?? 0, low.get(w) ?? 0));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v) ?? 0, wIndex));
      }
    }
    if (low.get(v) === index.get(v)) {
      const c: string[] = [];
      let w: string | undefined;
      do {
        w = stack.pop();
        if (w === undefined) break;
        onStack.delete(w);
        c.push(w);
      } while (w !== v);
      out.push(c);
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return out;
}

/** Shortest path from `from` to `to` inside `within` (both ends included), by breadth-first search. */
function shortestPath(graph: Graph, from: string, to: string, within: ReadonlySet<string>): string[] {
  const prev = new Map<string, string | null>([[from, null]]);
  const queue = [from];
  for (let v = queue.shift(); v !== undefined; v = queue.shift()) {
    if (v === to) break;
    for (const w of graph.get(v) ?? [])
      if (within.has(w) && !prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
  }
  const pathTo: string[] = [];
  for (let v: string | null | undefined = to; v !== null && v !== undefined; v = prev.get(v)) pathTo.unshift(v);
  return pathTo;
}

/**
 * Import circles, one per import that closes one: every edge u → v inside a strongly
 * connected component, completed by the shortest way back from v to u. Together they show
 * every import that would have to go for the graph to have no circle. Each circle starts at
 * its alphabetically first file and is written `a.ts → b.ts → a.ts`.
 */
function cyclesOf(graph: Graph, name: (f: string) => string = (f) => f): string[] {
  const found = new Set<string>();
  for (const c of components(graph)) {
    const members = new Set(c);
    for (const u of c) {
      for (const v of graph.get(u) ?? []) {
        if (!members.has(v)) continue;
        const loop = u === v ? [u] : [u, ...shortestPath(graph, v, u, members).slice(0, -1)];
        const first = loop.indexOf([...loop].sort()[0] ?? u);
        const rotated = [...loop.slice(first), ...loop.slice(0, first)];
        found.add([...rotated, rotated[0] ?? u].map(name).join(' → '));
      }
    }
  }
  return [...found].sort();
}

test('the import reader sees type-only, re-exported and dynamic imports, not comments or strings', () => {
  const text = [
    "import type { A } from './a.js';",
    "export { B } from './b.js';",
    "export * from './c.js';",
    "const d = await import('./d.js');",
    "type E = import('./e.js').E;",
    "// import { F } from './f.js';",
    'const g = "import { G } from \'./g.js\'";',
  ].join('\n');
  assert.deepEqual(specifiersOf(text), ['./a.js', './b.js', './c.js', './d.js', './e.js']);
});

test('the circle finder reports each import that closes a circle, and nothing for a tree', () => {
  const g: Graph = new Map([
    ['a.ts', ['b.ts']],
    ['b.ts', ['a.ts', 'c.ts']],
    ['c.ts', ['c.ts', 'd.ts']],
    ['d.ts', ['e.ts']],
    ['e.ts', ['b.ts']],
  ]);
  assert.deepEqual(cyclesOf(g), ['a.ts → b.ts → a.ts', 'b.ts → c.ts → d.ts → e.ts → b.ts', 'c.ts → c.ts']);
  const tree: Graph = new Map([
    ['a.ts', ['b.ts', 'c.ts']],
    ['b.ts', ['c.ts']],
    ['c.ts', []],
  ]);
  assert.deepEqual(cyclesOf(tree), []);
});

test('no import circle in src/ (type-only imports included)', () => {
  const { graph, unresolved } = srcGraph();
  assert.deepEqual(unresolved, [], 'every relative import resolves to a file');
  assert.ok(graph.size > 50, `the graph holds the modules of src/ (${graph.size})`);
  const cycles = cyclesOf(graph, rel);
  assert.equal(cycles.length, 0, `${cycles.length} import circle(s) in src/:\n${cycles.join('\n')}`);
});

test('nothing under src/migration/ or src/cluster/ imports from src/agent/', () => {
  const { graph } = srcGraph();
  const agent = path.join(REPO_ROOT, 'src', 'agent') + path.sep;
  const bad: string[] = [];
  for (const dir of ['migration', 'cluster']) {
    for (const f of filesUnder(path.join(REPO_ROOT, 'src', dir), ['.ts'])) {
      for (const d of graph.get(f) ?? []) if (d.startsWith(agent)) bad.push(`${rel(f)} → ${rel(d)}`);
    }
  }
  assert.equal(
    bad.length,
    0,
    `${bad.length} import(s) of src/agent/ from migration or cluster code:\n${bad.join('\n')}`,
  );
});

test(`no line longer than ${MAX_LINE} characters in src/ or web/src/`, () => {
  const long: string[] = [];
  for (const dir of ['src', 'web/src']) {
    for (const f of filesUnder(path.join(REPO_ROOT, dir), ['.ts', '.tsx'])) {
      fs.readFileSync(f, 'utf8')
        .split(/\r?\n/)
        .forEach((line, i) => {
          if (line.length > MAX_LINE) long.push(`${rel(f)}:${i + 1} (${line.length})`);
        });
    }
  }
  assert.equal(long.length, 0, `${long.length} line(s) over ${MAX_LINE} characters:\n${long.join('\n')}`);
});
