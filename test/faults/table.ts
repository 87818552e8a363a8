// Prints the fault matrix as a markdown table from a run's results (one JSON line per
// cell, see harness.ts RESULTS): `npx tsx test/faults/table.ts [.cache/fault-results.jsonl]`.
import fs from 'node:fs';
import {
  FAULTS,
  KINDS,
  PHASES,
  RESULTS,
  notApplicable,
  type CellResult,
  type Fault,
  type Kind,
  type Phase,
} from './harness.js';
import { expected } from './expect.js';

/** The cells `npm test` runs (test/e2e/netns.test.ts). */
export const CI_CELLS: Array<[Kind, Phase, Fault]> = [
  ['live', 'copying-memory', 'migration-net-cut'],
  ['shared-nothing', 'copying-storage', 'migration-net-cut'],
  ['shared-nothing', 'switching-over', 'source-agent-killed'],
  ['storage', 'copying-storage', 'dest-disk-full'],
];

const file = process.argv[2] ?? (RESULTS || '.cache/fault-results.jsonl');
const results = fs
  .readFileSync(file, 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((l) => JSON.parse(l) as CellResult);
const last = new Map<string, CellResult>();
for (const r of results) if (r.guest === 'probe') last.set(`${r.kind}|${r.phase}|${r.fault}`, r);

const head: Record<Fault, string> = {
  'dest-qemu-killed': 'destination QEMU killed',
  'dest-agent-killed': 'destination agent killed',
  'source-agent-killed': 'source agent killed',
  'migration-net-cut': 'migration network cut',
  'dest-disk-full': 'destination disk full',
  cancel: 'cancel',
};
const kindName: Record<Kind, string> = {
  live: 'live (shared storage)',
  'shared-nothing': 'shared nothing',
  storage: 'storage (same host)',
};
const reasons: string[] = [];
let pass = 0,
  fail = 0,
  na = 0,
  missing = 0;
const lines = [
  `| kind | phase | ${FAULTS.map((f) => head[f]).join(' | ')} |`,
  `|---|---|${FAULTS.map(() => '---').join('|')}|`,
];
for (const k of KINDS) {
  for (const p of PHASES) {
    const cells = FAULTS.map((f) => {
      const why = notApplicable(k, p, f);
      if (why) {
        na++;
        let i = reasons.indexOf(why);
        if (i < 0) {
          reasons.push(why);
          i = reasons.length - 1;
        }
        return `– (${String.fromCharCode(97 + i)})`;
      }
      const r = last.get(`${k}|${p}|${f}`);
      const ci = CI_CELLS.some(([a, b, c]) => a === k && b === p && c === f) ? ' **CI**' : '';
      if (!r) {
        missing++;
        return `?${ci}`;
      }
      const what =
        r.state === 'completed' ? 'completed' : r.state === 'cancelled' ? 'cancelled' : (r.code ?? r.state ?? '');
      // A result from before the cells stated their outcomes may pass with a state its cell does not allow.
      if (r.ok && (expected(k, p, f).outcomes as readonly string[]).includes(r.state ?? '')) {
        pass++;
        return `✔ ${what}${ci}`;
      }
      fail++;
      return `✘ ${what}${ci}`;
    });
    lines.push(`| ${kindName[k]} | ${p} | ${cells.join(' | ')} |`);
  }
}
process.stdout.write(lines.join('\n') + '\n\n');
process.stdout.write(reasons.map((r, i) => `(${String.fromCharCode(97 + i)}) ${r}`).join('  \n') + '\n\n');
const secs = [...last.values()].reduce((a, r) => a + r.seconds, 0);
process.stdout.write(
  `cells: ${KINDS.length * PHASES.length * FAULTS.length} · applicable ${pass + fail + missing} · ` +
    `passed ${pass} · failed ${fail} · not run ${missing} · not applicable ${na} · ` +
    `cell time ${Math.round(secs / 60)} min\n`,
);
for (const r of last.values())
  if (!r.ok)
    process.stdout.write(`\n✘ ${r.kind} × ${r.phase} × ${r.fault}: ${r.problem}\n  ${(r.events ?? []).join('\n  ')}\n`);

// The memory-pattern cells (bootblock guest).
const mem = new Map<string, CellResult>();
for (const r of results) if (r.guest === 'bootblock') mem.set(`${r.kind}|${r.phase}|${r.fault}`, r);
if (mem.size) {
  process.stdout.write('\n| kind | phase | fault | memory pattern (bootblock) |\n|---|---|---|---|\n');
  for (const r of mem.values())
    process.stdout.write(
      `| ${kindName[r.kind]} | ${r.phase} | ${head[r.fault]} | ` +
        `${r.ok ? '✔' : '✘'} ${r.state === 'failed' ? r.code : r.state} |\n`,
    );
  const mp = [...mem.values()].filter((r) => r.ok).length;
  process.stdout.write(`\nmemory cells: ${mem.size} · passed ${mp} · failed ${mem.size - mp}\n`);
  for (const r of mem.values())
    if (!r.ok)
      process.stdout.write(
        `\n✘ bootblock ${r.kind} × ${r.phase} × ${r.fault}: ${r.problem}\n  ${(r.events ?? []).join('\n  ')}\n`,
      );
}
