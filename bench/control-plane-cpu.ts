// What the control plane's own processes cost in CPU (issue 17, item 0: a move should cost at
// most 0.1 s of CPU across the CLI and both agents). In a 2-host lab, the probe guest (256 MiB)
// is moved back and forth with `ferry move-vm`; for each move the bench reads utime+stime from
// /proc/PID/stat of both agents before and after (10 ms ticks), and the CLI's own from its parent
// shell's `times` (its children's user+system time in ms, from getrusage: the CLI is a child the
// shell waited for: bin/ferry's bash, its staleness check and node). The agents' idle rate (CPU
// over a quiet spell, no move) is printed beside it: a polling loop shows there. Also `ferry
// --help`, `ferry vm list` and `node -e 0`, wall and CPU, and their ratios.
//
//   flock /work/wt/.heavy.lock npm run bench:cpu -- [--rounds N] [--startup-rounds N] [--idle-s S]
//     [--cluster-idle-s S] [--baseline OLD_CLI.mjs|OLD_CHECKOUT/bin/ferry]
//
// Then (--cluster-idle-s, default 30; 0 skips it) an idle 3-node cluster lab with one HA VM:
// each host's agent, fence and etcd member in CPU ms per s, and the etcd calls per s by method
// (bench/lib/cluster-idle.ts).
//
// Every other move is made by this checkout's package bundle as /usr/bin/ferry runs it (built into
// the temp folder with scripts/bundle.ts), or with --baseline by an older CLI (its --help too), for
// a before/after of the CLI in one run: a bundle, or another checkout's bin/ferry; the agents are
// this checkout's in both.
// The lab, its QEMUs and the temp folder are removed on every exit path.
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { REPO_ROOT, probeGuestFiles } from '../guest/paths.js';
import type { MigrationRecord } from '../src/migration/schemas.js';
import { readLab } from '../src/lab/file.js';
import { fmt, max, median, table } from './lib/stats.js';
import { clusterIdleReport, clusterLabDir } from './lib/cluster-idle.js';
import { cpuOf } from './lib/proc-cpu.js';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '4' },
    'startup-rounds': { type: 'string', default: '7' },
    'idle-s': { type: 'string', default: '10' },
    'cluster-idle-s': { type: 'string', default: '30' },
    baseline: { type: 'string' },
  },
});
const rounds = Number(args.rounds);
const startupRounds = Number(args['startup-rounds']);
const idleS = Number(args['idle-s']);
const clusterIdleS = Number(args['cluster-idle-s']);
const FERRY = path.join(REPO_ROOT, 'bin', 'ferry');
// A bundle is run by this Node; an executable (another checkout's bin/ferry) as it is, so both
// CLIs start alike (its sh, its staleness check, Node's flags).
const baseline = args.baseline
  ? /\.[cm]?js$/.test(args.baseline)
    ? [process.execPath, path.resolve(args.baseline)]
    : [path.resolve(args.baseline)]
  : null;
// The package's bundle (scripts/bundle.ts, as `npm run package` makes it: every pure-JS
// dependency inside, where a checkout's dist/ leaves the heavy ones in node_modules), built into
// the temp folder below; run as /usr/bin/ferry runs it (packaging/ferry.sh: sh, then the
// CommonJS bundle with its code cache, no check that the bundle is newer than the sources).
// Without a baseline it makes every other move: what a move's CLI costs an installed host.
const packageCli = (pkg: string, ...args: string[]): string[] => [
  'sh',
  '-c',
  'unset NODE_EXTRA_CA_CERTS; exec "$0" --use-openssl-ca "$@"',
  process.execPath,
  path.join(pkg, 'launch.cjs'),
  ...args,
];
const NODE_AS_FERRY = 'node -e 0, started as bin/ferry starts it';

interface Measured {
  code: number;
  stdout: string;
  stderr: string;
  wallMs: number;
  cpuMs: number;
}

/**
 * Runs argv under a shell that prints its children's CPU (`times`, from getrusage: ms, where
 * /proc's ticks are 10 ms, too coarse for a 20 ms start) after the command ended: it is then
 * exactly the command's, with everything the command waited for.
 */
function measured(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<Measured> {
  const script = '"$@" 3>&-; s=$?; times >&3; exit $s';
  const child = spawn('bash', ['-c', script, 'bash', ...argv], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    timeout: 600_000,
  });
  const t0 = performance.now();
  const out = { stdout: '', stderr: '', stat: '' };
  child.stdout?.on('data', (d: Buffer) => (out.stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out.stderr += d.toString()));
  child.stdio[3]?.on('data', (d: Buffer) => (out.stat += d.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      const wallMs = performance.now() - t0;
      // `times` prints the shell's own user and system time, then its children's: "0m0.072s 0m0.016s".
      const m = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/.exec(out.stat.trim().split('\n')[1] ?? '');
      if (!m) {
        reject(new Error(`no CPU times from the shell: ${out.stat.trim()} ${out.stderr.trim()}`));
        return;
      }
      const sec = (min?: string, s?: string): number => Number(min) * 60 + Number(s);
      const cpuMs = (sec(m[1], m[2]) + sec(m[3], m[4])) * 1000;
      resolve({ code: code ?? 1, stdout: out.stdout, stderr: out.stderr, wallMs, cpuMs });
    });
  });
}

async function ferryOk(a: string[], env: NodeJS.ProcessEnv, cli = [FERRY]): Promise<Measured> {
  const r = await measured([...cli, ...a], env);
  if (r.code !== 0) throw new Error(`ferry ${a.join(' ')} exited ${r.code}: ${r.stderr.trim().slice(0, 600)}`);
  return r;
}

interface Move {
  cli: string;
  to: string;
  cliMs: number;
  cliWallMs: number;
  agentMs: Record<string, number>;
  totalMs: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

if (!probeGuestFiles()) throw new Error('the probe guest is not built; run scripts/setup');
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-cpu-'));
const pkg = path.join(dir, 'package');
try {
  const err: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    const b = spawn(process.execPath, ['--import', 'tsx', 'scripts/bundle.ts', pkg], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    b.stderr.on('data', (d: Buffer) => err.push(d));
    b.on('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`scripts/bundle.ts exited ${code}: ${Buffer.concat(err).toString()}`)),
    );
  });
} catch (e) {
  await fs.rm(dir, { recursive: true, force: true });
  throw e;
}
const clis: Array<[string, string[]]> = [
  ['this', [FERRY]],
  baseline ? ['baseline', baseline] : ['package', packageCli(pkg)],
];
const lab = path.join(dir, 'lab');
// Every CLI's code cache in the temp folder (none is left in ~/.cache/ferry for a bundle that is
// gone), each warmed by a move before the measured ones.
const codeCache = path.join(dir, 'code-cache');
const env = { FERRY_LAB: lab, FERRY_CODE_CACHE: codeCache };
const load = os.loadavg();
const startup: Record<string, Array<{ wallMs: number; cpuMs: number }>> = {};
const moves: Move[] = [];
let idle: Record<string, number> = {};
const vmList: Array<{ wallMs: number; cpuMs: number }> = [];
try {
  // Start-up first, while nothing else of ours runs. `node dist/cli.mjs` is the bundle alone,
  // without bin/ferry's bash and its check that the bundle is newer than the sources.
  // `node -e 0` as this shell starts it, and as bin/ferry does (without NODE_EXTRA_CA_CERTS,
  // with --use-openssl-ca): when the environment names extra CAs, Node parses them at every start.
  const asFerry = { NODE_EXTRA_CA_CERTS: undefined, FERRY_CODE_CACHE: codeCache };
  const startups: Array<[string, string[], NodeJS.ProcessEnv?]> = [
    ['node -e 0', [process.execPath, '-e', '0']],
    [NODE_AS_FERRY, [process.execPath, '--use-openssl-ca', '-e', '0'], asFerry],
    ['ferry --help', [FERRY, '--help'], { FERRY_CODE_CACHE: codeCache }],
    // The package's bundle as /usr/bin/ferry runs it (packageCli).
    ['ferry --help, the package', packageCli(pkg, '--help'), { FERRY_CODE_CACHE: codeCache }],
    [
      'node dist/cli.mjs --help',
      [process.execPath, '--use-openssl-ca', path.join(REPO_ROOT, 'dist', 'cli.mjs'), '--help'],
      asFerry,
    ],
    ...(baseline ? [['baseline --help', [...baseline, '--help']] as [string, string[]]] : []),
  ];
  for (let i = 0; i < startupRounds; i++)
    for (const [name, argv, startEnv] of startups) {
      const r = await measured(argv, startEnv);
      if (r.code !== 0) throw new Error(`${name} exited ${r.code}: ${r.stderr}`);
      (startup[name] ??= []).push({ wallMs: r.wallMs, cpuMs: r.cpuMs });
    }

  await ferryOk(['lab', 'up', '--dir', lab, '--hosts', '2'], {});
  await ferryOk(
    ['vm', 'new', 'p1', '--host', 'host-a', '--guest', 'probe', '--path', path.join(lab, 'shared', 'p1'), '--start'],
    env,
  );
  const agents = (await readLab(lab)).hosts.map((h) => ({ name: h.name, pid: h.agentPid }));
  for (const a of agents) if (!a.pid) throw new Error(`the lab has no agent pid for ${a.name}`);
  const agentCpu = async (): Promise<Record<string, number>> =>
    Object.fromEntries(await Promise.all(agents.map(async (a) => [a.name, (await cpuOf(a.pid ?? 0)).own] as const)));

  // The agents with a running VM and nothing asked of them.
  await sleep(3000);
  const i0 = await agentCpu();
  const t0 = performance.now();
  await sleep(idleS * 1000);
  const i1 = await agentCpu();
  const idleSpan = (performance.now() - t0) / 1000;
  idle = Object.fromEntries(agents.map((a) => [a.name, ((i1[a.name] ?? 0) - (i0[a.name] ?? 0)) / idleSpan]));

  for (let i = 0; i < startupRounds; i++) vmList.push(await ferryOk(['vm', 'list'], env));

  let to = 'host-b';
  for (const [, argv] of clis) {
    await ferryOk(['move-vm', 'p1', '--to', to, '--json', '--progress', 'none'], env, argv);
    to = to === 'host-b' ? 'host-a' : 'host-b';
    await sleep(1000);
  }
  for (let i = 0; i < rounds * clis.length; i++) {
    // With two CLIs, in the order A B B A…: each moves in both directions (host-a → host-b and
    // back differ by more than the CLIs do), not always the same one.
    const [cli, argv] = clis[(i + (clis.length === 2 ? Math.floor(i / 2) : 0)) % clis.length] ?? ['this', [FERRY]];
    const before = await agentCpu();
    const r = await ferryOk(['move-vm', 'p1', '--to', to, '--json', '--progress', 'none'], env, argv);
    const after = await agentCpu();
    const rec = JSON.parse(r.stdout) as MigrationRecord;
    if (rec.state !== 'completed') throw new Error(`move ${i + 1} ended ${rec.state}: ${rec.error?.message ?? ''}`);
    moves.push({
      cli,
      to,
      cliMs: r.cpuMs,
      cliWallMs: r.wallMs,
      agentMs: Object.fromEntries(agents.map((a) => [a.name, (after[a.name] ?? 0) - (before[a.name] ?? 0)])),
      totalMs: rec.totalMs ?? NaN,
    });
    process.stderr.write(`move ${i + 1} → ${to}: ${JSON.stringify(moves.at(-1))}\n`);
    to = to === 'host-b' ? 'host-a' : 'host-b';
    await sleep(1000);
  }
} finally {
  await measured([FERRY, 'lab', 'down', '--dir', lab]).catch(() => undefined);
}

// An idle cluster: each host's agent, fence and etcd member, after a warm-up (the first minute
// of a new cluster has its own work: joins, the first leader's sweep).
let clusterIdle = '';
try {
  if (clusterIdleS > 0) {
    const cl = clusterLabDir(dir);
    const cenv = { FERRY_LAB: cl };
    await ferryOk(['lab', 'up', '--dir', cl, '--hosts', '3', '--cluster'], {});
    const status = JSON.parse((await ferryOk(['cluster', 'status', '--json'], cenv)).stdout) as { leader?: string };
    const leader = status.leader ?? '';
    const vmHost = ['host-a', 'host-b', 'host-c'].find((h) => h !== leader) ?? 'host-a';
    await ferryOk(
      [
        'vm',
        'new',
        'ha1',
        '--host',
        vmHost,
        '--guest',
        'probe',
        '--ha',
        '--path',
        path.join(cl, 'shared', 'ha1'),
      ].concat('--start'),
      cenv,
    );
    await sleep(30_000);
    clusterIdle = await clusterIdleReport(cl, clusterIdleS, leader, vmHost);
  }
} finally {
  await measured([FERRY, 'lab', 'down', '--dir', clusterLabDir(dir)]).catch(() => undefined);
  await fs.rm(dir, { recursive: true, force: true });
}

const ratio = (a: number | null, b: number | null): string => (a !== null && b ? (a / b).toFixed(2) : '-');
const medianOf = (name: string, k: 'cpuMs' | 'wallMs'): number | null => median((startup[name] ?? []).map((s) => s[k]));
const row = (name: string, s: Array<{ wallMs: number; cpuMs: number }>): string[] => {
  const cpu = median(s.map((x) => x.cpuMs));
  const wall = median(s.map((x) => x.wallMs));
  return [
    name,
    fmt(wall),
    fmt(cpu),
    ...['node -e 0', NODE_AS_FERRY].flatMap((n) => [
      ratio(wall, medianOf(n, 'wallMs')),
      ratio(cpu, medianOf(n, 'cpuMs')),
    ]),
  ];
};
const rows = [...Object.entries(startup).map(([name, s]) => row(name, s)), row('ferry vm list (2 hosts)', vmList)];
process.stdout.write(
  `\nload before: ${load.map((x) => x.toFixed(2)).join(' ')}; ${os.cpus().length} cpus; ` +
    "commands' CPU from getrusage (ms), the agents' from /proc (10 ms ticks)\n" +
    `start-up, ${startupRounds} runs each, medians\n` +
    table(['command', 'wall ms', 'CPU ms', 'wall ×node', 'CPU ×node', 'wall ×node²', 'CPU ×node²'], rows) +
    `\n(×node: against \`node -e 0\`; ×node²: against \`${NODE_AS_FERRY}\`)\n` +
    '\n',
);
const hosts = Object.keys(idle);
const sumAgents = (mv: Move): number => hosts.reduce((sum, h) => sum + (mv.agentMs[h] ?? 0), 0);
const stat = (f: (xs: number[]) => number | null, ms: Move[]): string[] => [
  fmt(f(ms.map((x) => x.cliMs))),
  ...hosts.map((h) => fmt(f(ms.map((x) => x.agentMs[h] ?? 0)))),
  fmt(f(ms.map(sumAgents))),
  fmt(f(ms.map((x) => x.cliMs + sumAgents(x)))),
  fmt(f(ms.map((x) => x.cliWallMs))),
  fmt(f(ms.map((x) => x.totalMs))),
];
process.stdout.write(
  `\nmove-vm of the probe guest (256 MiB, TLS on), ${moves.length} moves back and forth: CPU ms per move\n` +
    table(
      ['CLI', '', 'CLI', ...hosts.map((h) => `agent ${h}`), 'agents', 'CLI+agents', 'CLI wall ms', 'record total ms'],
      clis.flatMap(([cli]) => {
        const ms = moves.filter((x) => x.cli === cli);
        return [
          [cli, 'median', ...stat(median, ms)],
          [cli, 'worst', ...stat(max, ms)],
        ];
      }),
    ) +
    '\nagents idle (a running VM, no request), CPU ms per s: ' +
    `${hosts.map((h) => `${h} ${fmt(idle[h] ?? null, 1)}`).join(', ')}\n` +
    clusterIdle,
);
