import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  createVm,
  startVm,
  stopVm,
  pauseVm,
  resumeVm,
  vmState,
  removeVm,
  runtimePaths,
} from '../../src/vm/lifecycle.js';
import { loadVm } from '../../src/vm/folder.js';
import { probeVm } from '../../src/vm/guests.js';
import { parseSerial, heartbeatGaps, verifyDiskImage } from '../../guest/records.js';
import { sleep } from '../../src/util/exec.js';
import { tempDir, testAccel, waitForFile, testPools } from '../helpers.js';

test(
  'probe VM: heartbeat, pause stops it and resume continues the sequence, acked records intact ' + 'after power-off',
  async (t) => {
    const dir = await tempDir(t);
    const g = probeVm({ name: 'probe1', configPath: path.join(dir, 'probe1') });
    const spec = await createVm(g.spec, g.create);
    assert.deepEqual(await loadVm(spec.configPath), spec);
    const runDir = path.join(dir, 'run');
    const proc = await startVm(spec, { runDir, accel: await testAccel(), pools: testPools(dir) });
    t.after(() => proc.kill());
    const log = runtimePaths(runDir).serialLog;
    await waitForFile(log, (s) => parseSerial(s).heartbeats.length >= 25 && parseSerial(s).acks.length >= 10, {
      timeoutMs: 60_000,
      what: 'heartbeats and acks',
    });

    await pauseVm(proc);
    assert.equal((await vmState(proc)).state, 'paused');
    await sleep(300); // a line in flight at the pause may still land
    const atPause = parseSerial(await fsp.readFile(log, 'utf8')).heartbeats.length;
    await sleep(1500);
    const stillPaused = parseSerial(await fsp.readFile(log, 'utf8')).heartbeats.length;
    assert.equal(stillPaused, atPause, 'no heartbeat while paused');

    await resumeVm(proc);
    await waitForFile(log, (s) => parseSerial(s).heartbeats.length >= atPause + 25, {
      timeoutMs: 30_000,
      what: 'heartbeats after resume',
    });
    const hbs = parseSerial(await fsp.readFile(log, 'utf8')).heartbeats;
    const gaps = heartbeatGaps(hbs);
    assert.equal(gaps.resets, 0, 'the sequence never resets');
    assert.equal(gaps.maxSeqGap, 0, 'no heartbeat lost');

    const stopped = await stopVm(proc, { timeoutMs: 30_000 });
    assert.equal(stopped.graceful, true, 'the guest powers off on ACPI power-down');
    const serial = parseSerial(await fsp.readFile(log, 'utf8'));
    assert.ok(serial.highestAck! > 10);
    const report = await verifyDiskImage(spec.disks[0]!.path, { format: 'qcow2', highestAck: serial.highestAck! });
    assert.equal(report.ok, true, report.problems.join('; '));
    assert.ok(report.highestContiguous >= serial.highestAck!);

    await removeVm(spec, { deleteDisks: true, pools: testPools(dir) });
    await assert.rejects(fsp.access(spec.configPath));
  },
);
