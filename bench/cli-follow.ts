// What following one move costs the CLI: `ferry move-vm --json` of a bootblock VM (64 MiB,
// --bandwidth 32) back and forth in a 2-host lab, counting the HTTP requests the CLI process
// makes and its own CPU time (both seen from inside it: test/e2e/request-log.ts), and the
// tail from the record's end (finishedAt) to the CLI's exit.
//
//   flock /work/wt/.heavy.lock npm run bench:cli-follow -- [--rounds N] [--baseline OLD_CLI.mjs]
//
// --baseline runs an older CLI bundle (e.g. one built before the CLI followed events, which
// polled the record every 300 ms) on the same moves, alternating with this one.
// The lab, its QEMUs and the temp folder are removed on every exit path.
import { execFile } from 'node:child_process';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { REPO_ROOT } from '../guest/paths.js';
import type { MigrationRecord } from '../src/migration/schemas.js';
import { readRequestLog, requestLogEnv } from '../test/e2e/request-log.js';
import { fmt, median, table } from './lib/stats.js';

const { values: args } = parseArgs({
  options: { rounds: { type: 'string', default: '2' }, baseline: { type: 'string' } },
});
const rounds = Number(args.rounds);
const clis: Array<{ name: string; argv: string[] }> = [
  { name: 'events (this)', argv: [path.join(REPO_ROOT, 'bin', 'ferry')] },
  ...(args.baseline ? [{ name: 'baseline', argv: [process.execPath, path.resolve(args.baseline)] }] : []),
];

interface Run {
  cli: string;
  requests: number;
  migrationGets: number;
  cpuMs: number;
  wallMs: number;
  moveMs: number;
  tailMs: number;
}

function run(argv: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  const [cmd = '', ...rest] = argv;
  return new Promise((resolve) => {
    execFile(cmd, rest, { env: { ...process.env, ...env }, timeout: 300_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function ferryOk(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const r = await run([path.join(REPO_ROOT, 'bin', 'ferry'), ...args], env);
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-cf-'));
const lab = path.join(dir, 'lab');
const env = { FERRY_LAB: lab };
const runs: Run[] = [];
try {
  await ferryOk(['lab', 'up', '--dir', lab, '--hosts', '2'], {});
  const vmArgs = ['vm', 'new', 'f1', '--host', 'host-a', '--guest', 'bootblock', '--memory', '64M'];
  await ferryOk([...vmArgs, '--path', path.join(lab, 'shared', 'f1'), '--start'], env);
  let to = 'host-b';
  for (let i = 0; i < rounds; i++) {
    for (const cli of clis) {
      const log = path.join(dir, `requests-${runs.length}.json`);
      const t0 = Date.now();
      const moveArgs = ['move-vm', 'f1', '--to', to, '--bandwidth', '32', '--max-downtime', '5000', '--json'];
      const r = await run([...cli.argv, ...moveArgs], { ...env, ...requestLogEnv(log) });
      const end = Date.now();
      if (r.code !== 0) throw new Error(`${cli.name}: move-vm exited ${r.code}: ${r.stderr.trim()}`);
      const rec = JSON.parse(r.stdout) as MigrationRecord;
      const l = await readRequestLog(log);
      runs.push({
        cli: cli.name,
        requests: l.requests.length,
        migrationGets: l.requests.filter((q) => q.startsWith(`GET /v1/migrations/${rec.id}`)).length,
        cpuMs: l.cpuUserMs + l.cpuSystemMs,
        wallMs: end - t0,
        moveMs: rec.totalMs ?? NaN,
        tailMs: rec.finishedAt ? end - Date.parse(rec.finishedAt) : NaN,
      });
      process.stderr.write(`${cli.name} → ${to}: ${JSON.stringify(runs.at(-1))}\n`);
      to = to === 'host-b' ? 'host-a' : 'host-b';
    }
  }
} finally {
  await run([path.join(REPO_ROOT, 'bin', 'ferry'), 'lab', 'down', '--dir', lab], {});
  await fsp.rm(dir, { recursive: true, force: true });
}

const med = (cli: string, k: keyof Omit<Run, 'cli'>): string =>
  fmt(median(runs.filter((r) => r.cli === cli).map((r) => r[k])));
process.stdout.write(
  `\nmove-vm of a 64 MiB bootblock VM at 32 MiB/s, ${rounds} round(s), medians (CPU: the CLI process itself)\n` +
    table(
      ['CLI', 'requests', 'GETs of the record', 'CPU ms', 'wall ms', 'move ms', 'end→exit ms'],
      clis.map((c) => [
        c.name,
        med(c.name, 'requests'),
        med(c.name, 'migrationGets'),
        med(c.name, 'cpuMs'),
        med(c.name, 'wallMs'),
        med(c.name, 'moveMs'),
        med(c.name, 'tailMs'),
      ]),
    ) +
    '\n',
);
