// `npm run demo`: boots the probe guest, shows its heartbeat and disk acknowledgements for a
// few seconds, stops it and checks that every acknowledged write is on its disk.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createVm, startVm, stopVm, runtimePaths } from '../src/vm/lifecycle.js';
import { probeVm } from '../src/vm/guests.js';
import { detectAccelerator } from '../src/qemu/accel.js';
import { parseSerial, verifyDiskImage } from '../guest/records.js';
import { sleep } from '../src/util/exec.js';

const seconds = Number(process.env.FERRY_DEMO_SECONDS ?? 6);
const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-demo-'));
const say = (s: string): void => { process.stdout.write(s + '\n'); };
let proc: Awaited<ReturnType<typeof startVm>> | null = null;
try {
  const accel = await detectAccelerator();
  say(`accelerator: ${accel.accel} (${accel.reason})`);
  const g = probeVm({ name: 'demo', configPath: path.join(dir, 'demo') });
  const spec = await createVm(g.spec, g.create);
  const runDir = path.join(dir, 'run');
  const t0 = Date.now();
  proc = await startVm(spec, { runDir, accel: accel.accel });
  say(`started VM 'demo' (QEMU pid ${proc.pid}), waiting for the guest…`);
  const log = runtimePaths(runDir).serialLog;
  let firstHb = 0;
  for (let i = 0; i < 600 && !firstHb; i++) {
    if (parseSerial(await fsp.readFile(log, 'utf8').catch(() => '')).heartbeats.length) firstHb = Date.now() - t0;
    else await sleep(100);
  }
  if (!firstHb) throw new Error('the guest printed no heartbeat within 60 s');
  say(`first heartbeat ${firstHb} ms after start; console for ${seconds} s:`);
  for (let s = 1; s <= seconds; s++) {
    await sleep(1000);
    const r = parseSerial(await fsp.readFile(log, 'utf8'));
    const hb = r.heartbeats.at(-1);
    say(`  t+${s}s  ferry-hb ${hb?.seq} ${hb?.guestMs}   ferry-ack ${r.highestAck ?? '-'}   (${r.heartbeats.length} heartbeats, ${r.acks.length} records acknowledged)`);
  }
  const stopped = await stopVm(proc, { timeoutMs: 30_000 });
  say(`stopped (${stopped.graceful ? 'guest powered off' : 'forced'})`);
  const r = parseSerial(await fsp.readFile(log, 'utf8'));
  const report = await verifyDiskImage(spec.disks[0]!.path, { format: 'qcow2', highestAck: r.highestAck ?? undefined });
  say(`disk check: ${report.ok ? 'every acknowledged record is on the disk' : 'FAILED: ' + report.problems.join('; ')} (acked ${r.highestAck}, on disk up to ${report.highestContiguous})`);
  say('\nNext: npm test runs the suites; bin/ferry --help lists the commands.');
  if (!report.ok) process.exitCode = 1;
} finally {
  if (proc && !proc.hasExited) await proc.kill();
  await fsp.rm(dir, { recursive: true, force: true });
}
