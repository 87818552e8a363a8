// Issue 17 item 6 end to end: a shared-nothing `move-vm` whose disk copy is cut at ~60 % (the
// destination's QEMU killed) is retried with the same command; the retry finds the partial copy
// kept on the destination and the source's bitmap, and re-sends less than half the disks. The
// probe guest writes checked records all along: every acknowledged one is on the moved disk,
// the second disk's data is intact, and exactly one QEMU runs the VM afterwards.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { useLab, hostData, waitProbe, heartbeatContinuity, waitMigration } from './lab.js';
import { assertMovedIntact, makeFillDisk, vmPids as vmPidsOf } from './resume-check.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { sleep } from '../../src/util/exec.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

const L = useLab(2);
const MiB = 1048576;
// Past half: the bitmap owes the rest plus the guest's writes (64 KiB granules), see docs/performance.md.
const CUT = 0.6;

const show = (name: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });

const vmPids = (host: string, vmId: string): Promise<number[]> => vmPidsOf(L, host, vmId);

const markers = (host: string): string[] => {
  try {
    return fs.readdirSync(path.join(hostData(L, host), 'resume')).filter((f) => f.endsWith('.json'));
  } catch {
    return [];
  }
};

test(
  'a shared-nothing move cut at ~60 % resumes on retry: less than half the disks re-sent, data intact',
  {
    timeout: 240_000,
  },
  async (t) => {
    const name = 'resume1';
    const fill = path.join(hostData(L, 'host-a'), 'pools', 'local', `${name}-fill.qcow2`);
    makeFillDisk(fill);
    const vm = await ferryOk<VmView>(
      [
        'vm',
        'new',
        name,
        '--host',
        'host-a',
        '--guest',
        'probe',
        '--disk',
        '64M',
        '--attach',
        fill,
        '--start',
        '--json',
      ],
      { lab: L.lab },
    );
    await waitProbe(L, vm, 10, 90_000);
    // Slowed so the cut lands inside the copy; the retry is the same command. The disks are far
    // under --resumable auto's 1 GiB (a short test): `always` asks for the resumable copy.
    const move = ['move-vm', name, '--to', 'host-b', '--include-storage', '--resumable', 'always', '--bandwidth', '4'];
    const id = (await ferryOk<string>([...move, '--no-wait'], { lab: L.lab })).trim();
    // The copy's progress straight from the source's QEMU (its jobs' counters), so the cut lands
    // at the mark and not a CLI round trip later.
    const qmp = await QmpClient.connect(path.join(hostData(L, 'host-a'), 'run', vm.id, 'qmp-admin.sock'), {
      vm: name,
    });
    const at = { done: 0, total: 0 };
    try {
      for (let i = 0; ; i++) {
        const jobs = (await qmp.execute('query-jobs')).filter((j) => j.id.startsWith('mirror-'));
        at.done = jobs.reduce((a, j) => a + j['current-progress'], 0);
        at.total = jobs.reduce((a, j) => a + j['total-progress'], 0);
        // Each disk past the mark: the disks' copies run side by side, at their own pace.
        if (
          jobs.length === 2 &&
          jobs.every((j) => j['total-progress'] > 0 && j['current-progress'] >= j['total-progress'] * CUT)
        )
          break;
        assert.ok(i < 3000, 'the copy reached the cut');
        await sleep(20);
      }
    } finally {
      qmp.close();
    }
    const killed = await vmPids('host-b', vm.id);
    assert.ok(killed.length, "the destination's QEMU runs");
    for (const p of killed) process.kill(p, 'SIGKILL');
    const cut = await waitMigration(L, id, ['failed', 'cancelled', 'completed'], 90_000);
    assert.equal(cut.state, 'failed', `the cut move: ${JSON.stringify(cut.error)}`);
    assert.equal(cut.diskCopy, 'resumable');
    assert.equal((await show(name)).host, 'host-a');
    // The partial copy is kept on host-b for a retry (one marker per disk), no VM registered there.
    for (let i = 0; markers('host-b').length < 2 && i < 100; i++) await sleep(200);
    assert.equal(markers('host-b').length, 2, 'host-b keeps both partial disks');

    const retry = await ferry([...move, '--json'], { lab: L.lab, timeoutMs: 180_000 });
    assert.equal(retry.code, 0, `retry: ${retry.stderr}`);
    const rr = JSON.parse(retry.stdout) as MigrationRecord;
    assert.equal(rr.state, 'completed', `retry: ${JSON.stringify(rr.error)}`);
    assert.equal(rr.diskCopy, 'resumable');
    const resumed = rr.disks.filter((d) => d.resumed);
    assert.equal(resumed.length, 2, `both disks resumed: ${JSON.stringify(rr.events.map((e) => e.message))}`);
    const resent = resumed.reduce((a, d) => a + (d.resumed?.resentBytes ?? 0), 0);
    const size = resumed.reduce((a, d) => a + (d.resumed?.diskBytes ?? 0), 0);
    for (const d of resumed)
      assert.ok(
        (d.resumed?.resentBytes ?? 0) < (d.resumed?.diskBytes ?? 0) / 2,
        `disk '${d.id}': ${JSON.stringify(d.resumed)}`,
      );
    assert.ok(resent < size / 2, `re-sent ${resent} of ${size} bytes`);
    assert.ok(
      rr.events.some((e) => /copy resumed, [\d.]+ MiB re-sent of [\d.]+ MiB/.test(e.message)),
      'the record says the copy resumed',
    );
    t.diagnostic(
      `cut at ${((at.done / at.total) * 100).toFixed(0)} % ` +
        `(${(at.done / MiB).toFixed(1)} of ${(at.total / MiB).toFixed(1)} MiB); ` +
        `the retry re-sent ${(resent / MiB).toFixed(1)} MiB of ${(size / MiB).toFixed(1)} MiB ` +
        `(${((resent / size) * 100).toFixed(0)} %); downtime ${rr.downtimeMs} ms`,
    );
    assert.deepEqual(markers('host-b'), [], 'the kept copies were taken over');

    // Exactly one QEMU runs the VM, on host-b; every acknowledged record on the moved disk, the
    // second disk intact.
    const logs = await assertMovedIntact(L, name, vm.id);
    assert.ok(heartbeatContinuity(logs).missing.length <= 1, 'no heartbeat lost');
    await ferryOk(['vm', 'rm', name], { lab: L.lab });
  },
);
