// How good `compare-vm --predict` is (issue 17, item 4): in a 2-host lab, probe guests (256 MiB,
// or --memory MIB: a larger guest's longer first pass is where a working set shows)
// that are idle or dirty memory at 16, 64 and 128 MiB/s are predicted and then moved with
// `ferry move-vm`, back and forth; the prediction (kept in the move's record) is set against
// the record's outcome: total time, downtime, and the ladder step against what the move did.
// A warm-up move of an idle guest first gives each host a recent move to learn the link from.
//
//   flock /work/wt/.heavy.lock npm run bench:predict -- [--rounds N] [--workloads idle,16,64,128]
//     [--memory MIB] [--keep]
//
// Under TCG a Linux guest dirtying ≥ 64 MiB/s may oops after a move (shared/QEMU-NOTES §E): the
// move itself completes, which is all this measures. The lab and its QEMUs go on every exit path.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { sleep } from '../src/util/exec.js';
import { moveTimes } from '../src/migration/predict.js';
import type { CompareReport, MigrationRecord, Prediction } from '../src/migration/schemas.js';
import { FerryLab, ferryOk } from './lib/ferry-path.js';
import { fmt, median, max, table } from './lib/stats.js';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '2' },
    workloads: { type: 'string', default: 'idle,16,64,128' },
    memory: { type: 'string', default: '256' },
    keep: { type: 'boolean', default: false },
  },
});
const MiB = 1024 * 1024;
const rounds = Number(args.rounds);
const memoryMiB = Number(args.memory);
if (!Number.isInteger(memoryMiB) || memoryMiB < 128) throw new Error(`--memory ${args.memory}: use a whole MiB ≥ 128`);
/** Dirtier per workload: working set MiB @ MiB/s (the probe's ferry.dirty). */
const DIRTY: Record<string, string | null> = { idle: null, '16': '64@16', '64': '64@64', '128': '128@128' };
const workloads = args.workloads.split(',');
for (const w of workloads) if (!(w in DIRTY)) throw new Error(`unknown workload '${w}': use idle, 16, 64, 128`);

interface Row {
  workload: string;
  round: number;
  p: Prediction;
  r: MigrationRecord;
}

const log = (m: string): void => void process.stderr.write(`[predict] ${m}\n`);

async function main(): Promise<void> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fpred-'));
  const lab = new FerryLab(dir);
  const load0 = os.loadavg();
  const rows: Row[] = [];
  let up = false;
  const cleanup = async (): Promise<void> => {
    if (up) log(await lab.down());
    up = false;
    if (!args.keep) await fsp.rm(dir, { recursive: true, force: true });
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.once(sig, () => void cleanup().finally(() => process.exit(130)));
  try {
    const load = load0.map((x) => x.toFixed(2)).join(' ');
    log(`temp dir ${dir}; guests of ${memoryMiB} MiB; ${os.cpus().length} cpus; load ${load}`);
    // Down also after a failed up: it stops whichever agent did start.
    up = true;
    await lab.up();
    // Warm-up: one idle move each way, so both hosts have a recent move to learn the link from.
    await lab.newProbe('warm', null);
    await sleep(8000);
    for (const to of ['host-b', 'host-a']) {
      const m = await lab.move('warm', to);
      if (m.error) throw new Error(`warm-up move to ${to}: ${m.error}`);
    }
    await lab.remove('warm');

    for (const w of workloads) {
      const name = `p-${w}`;
      await lab.newProbe(name, DIRTY[w] ?? null, memoryMiB);
      // Boot, then let the dirtier run through its working set.
      await sleep(12_000);
      let at = 'host-a';
      for (let round = 1; round <= rounds; round++) {
        const to = at === 'host-a' ? 'host-b' : 'host-a';
        const rep = await ferryOk<CompareReport>(['compare-vm', name, '--to', to, '--predict', '--json'], {
          lab: lab.lab,
        });
        const m = await lab.move(name, to);
        if (!m.record) throw new Error(`${name} round ${round}: ${m.error}`);
        const p = m.record.prediction ?? rep.prediction;
        if (!p) throw new Error(`${name}: no prediction`);
        rows.push({ workload: w, round, p, r: m.record });
        log(
          `${name} ${at}→${to}: ${p.summary}; actual ${m.record.state} ${m.record.totalMs} ms, ` +
            `downtime ${m.record.downtimeMs} ms, ${m.record.passes} passes, throttle ${m.record.throttlePct} %`,
        );
        if (m.record.state === 'completed') at = to;
      }
      await lab.remove(name);
    }
  } finally {
    await cleanup();
  }

  const load1 = os.loadavg();
  const err = (pred: number | null, act: number | null): number =>
    pred === null || act === null || act <= 0 ? NaN : ((pred - act) / act) * 100;
  const out = rows.map(({ workload, round, p, r }) => {
    const t = moveTimes(r);
    // The prediction's parts against the move's: the copy before the pause, and the rest.
    const copyPred = p.totalMs - p.overheadMs - (p.downtimeMs ?? 0);
    return [
      workload,
      String(round),
      // The dirty rate, and the working set when a second sample found one.
      `${fmt(p.dirtyRateMiBps, 1)}${p.workingSetMiB === undefined ? '' : ` / ${fmt(p.workingSetMiB)}`}`,
      `${fmt(p.linkMiBps)} / ${p.zeroMiBps === undefined ? '-' : fmt(p.zeroMiBps)}`,
      // The first pass's share of memory on the wire, predicted (sampled from the guest's RAM) and actual (bytes sent).
      `${p.wireShare === undefined ? '-' : fmt(p.wireShare, 2)} / ${fmt(r.bytesTransferred / (p.memoryMiB * MiB), 2)}`,
      p.step,
      `${r.state}/${r.throttlePct ? 'throttled' : r.passes > 1 ? `${r.passes} passes` : '1 pass'}`,
      fmt(p.totalMs),
      fmt(r.totalMs),
      fmt(err(p.totalMs, r.totalMs)),
      fmt(p.downtimeMs),
      fmt(r.downtimeMs),
      `${fmt(copyPred)} / ${t ? fmt(t.precopyMs) : '-'}`,
      `${fmt(p.overheadMs)} / ${t ? fmt(t.overheadMs) : '-'}`,
      `${fmt(p.passes)} / ${fmt(r.passes)}`,
      r.pausedBytes == null ? '-' : fmt(r.pausedBytes / MiB, 1),
    ];
  });
  process.stdout.write(
    `${table(
      [
        'workload MiB/s',
        'round',
        'dirty MiB/s / set MiB',
        'link MiB/s data / zero',
        'wire share pred / sent',
        'predicted step',
        'actual',
        'pred ms',
        'total ms',
        'err %',
        'pred down ms',
        'down ms',
        'copy ms pred / actual',
        'rest ms pred / actual',
        'passes pred / actual',
        'paused MiB',
      ],
      out,
    )}\n\n`,
  );
  const summary = workloads.map((w) => {
    const mine = rows.filter((x) => x.workload === w);
    const totalErr = mine.map((x) => Math.abs(err(x.p.totalMs, x.r.totalMs)));
    const downErr = mine.map((x) => Math.abs((x.p.downtimeMs ?? NaN) - (x.r.downtimeMs ?? NaN)));
    return [w, fmt(median(totalErr)), fmt(max(totalErr)), fmt(median(downErr)), fmt(max(downErr))];
  });
  process.stdout.write(
    `${table(['workload', '|total err| % med', 'max', '|downtime err| ms med', 'max'], summary)}\n` +
      `load before ${load0.map((x) => x.toFixed(2)).join(' ')}, after ${load1.map((x) => x.toFixed(2)).join(' ')}\n`,
  );
}

await main();
