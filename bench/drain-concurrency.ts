// Drain time by concurrency (issue #17.5): `ferry cluster drain` of N probe VMs from host-c
// (3-node cluster lab, real etcd and QEMU, TLS on) with fixed limits 1, 2 and 4 moves out of
// a node at once, then adaptive (up to 4) twice: the leader learns from the first drain's
// moves, the second shows what it learnt; fixed 2 again at the end is the control for order
// effects. Between drains the VMs are moved back (not timed).
// Each drain's levels and reasons come from its batch (`concurrency`).
//
//   npx tsx bench/drain-concurrency.ts [--vms N] [--memory MIB] [--keep]
//
// Everything it starts is stopped on every exit path; the temp folder is removed unless --keep.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { spawnSync } from 'node:child_process';
import { sleep } from '../src/util/exec.js';
import type { BatchView, VmView } from '../src/api/schemas.js';
import { fmt, table } from './lib/stats.js';
import { ferry, flag, json, newProbe, opt } from './lib/lab-cli.js';

const NVMS = Number(opt('vms', '10'));
const MEMORY = opt('memory', '96');
const KEEP = flag('keep');
const BIN = path.join(import.meta.dirname, '..', 'bin', 'ferry');

/** One drain of host-c with the given limits; the VMs are back on host-c afterwards. */
function drainOnce(
  lab: string,
  names: string[],
  limit: number,
  adaptive: boolean,
): { ms: number; moved: number; levels: string } {
  ferry(
    [
      'cluster',
      'set',
      '--max-outgoing',
      String(limit),
      '--max-incoming',
      String(limit),
      '--adaptive',
      adaptive ? 'on' : 'off',
    ],
    lab,
  );
  const t0 = performance.now();
  const b = json(['cluster', 'drain', 'host-c'], lab) as BatchView | null;
  const ms = performance.now() - t0;
  const moved = b?.items.filter((i) => i.state === 'moved').length ?? 0;
  const levels = (b?.concurrency ?? []).map((c) => `→${c.level} (${c.reason})`).join(', ') || '-';
  ferry(['cluster', 'resume', 'host-c'], lab);
  for (const n of names) {
    const v = json(['vm', 'show', n], lab) as VmView;
    if (v.host !== 'host-c') ferry(['move-vm', n, '--to', 'host-c'], lab);
  }
  return { ms, moved, levels };
}

const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fbd-'));
const lab = path.join(dir, 'lab');
let failed = false;
try {
  process.stdout.write(
    `bench/drain-concurrency on ${os.cpus().length} CPUs (TCG guests), ${new Date().toISOString()}, ` +
      `load ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}\n\n`,
  );
  ferry(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster'], lab);
  const names = Array.from({ length: NVMS }, (_, i) => `d${i + 1}`);
  for (const n of names) newProbe(lab, n, 'host-c', ['--probe-no-writer', '--memory', MEMORY]);
  await sleep(15_000); // let them boot
  const rows: string[][] = [];
  const runs: Array<[string, number, boolean]> = [
    ['fixed 1', 1, false],
    ['fixed 2', 2, false],
    ['fixed 4', 4, false],
    ['adaptive ≤4, 1st drain', 4, true],
    ['adaptive ≤4, 2nd drain', 4, true],
    // The same fixed limit again last: shows how much of a later drain's figure is its order.
    ['fixed 2, again', 2, false],
  ];
  const byName = new Map<string, number>();
  for (const [name, limit, adaptive] of runs) {
    const r = drainOnce(lab, names, limit, adaptive);
    byName.set(name, r.ms);
    rows.push([name, fmt(r.ms), `${r.moved}/${NVMS}`, r.levels]);
    process.stdout.write(`${name}: ${fmt(r.ms)} ms\n`);
  }
  const base = byName.get('fixed 2') ?? 1;
  process.stdout.write(
    `\nDrain of ${NVMS} probe VMs (${MEMORY} MiB, idle) from host-c to host-a and host-b:\n` +
      table(
        ['limits', 'drain ms', 'moved', 'adaptive levels (host-c outgoing)'],
        rows.map((r) => [...r.slice(0, 3), r[3]!.slice(0, 160)]),
      ) +
      `\nratios to fixed 2 (today's default): ` +
      [...byName].map(([k, v]) => `${k} ${fmt(v / base, 2)}`).join(', ') +
      '\n',
  );
} catch (err) {
  failed = true;
  process.stderr.write(`bench/drain-concurrency failed: ${(err as Error).stack}\n`);
} finally {
  spawnSync(BIN, ['lab', 'down', '--dir', lab], { env: { ...process.env, FERRY_LAB: lab }, timeout: 300_000 });
  if (!KEEP) await fsp.rm(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
