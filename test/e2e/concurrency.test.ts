// Moves that run at the same time, through bin/ferry against a real 2-host lab: many arrivals
// on one host (TLS files written once, never while QEMU reads them), crossing moves at the
// limit (no deadlock), and two storage moves into one folder (neither deletes the other's disk).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { useLab, serialLog, waitProbe, waitMigration, hostData } from './lab.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { sleep } from '../../src/util/exec.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

const L = useLab(2, { vmsPerTest: true });
// Two rounds each way (16 moves) keep npm test under its time limit; FERRY_CONCURRENCY_ROUNDS=N runs more.
const ROUNDS = Number(process.env.FERRY_CONCURRENCY_ROUNDS ?? 2);
const show = (name: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });

async function newProbe(name: string, host: string, extra: string[] = [], where = path.join(L.lab, 'shared', name)) {
  return ferryOk<VmView>(
    [
      'vm',
      'new',
      name,
      '--host',
      host,
      '--guest',
      'probe',
      '--memory',
      '96M',
      '--path',
      where,
      ...extra,
      '--start',
      '--json',
    ],
    { lab: L.lab },
  );
}

async function moveAll(pairs: Array<[string, string]>): Promise<MigrationRecord[]> {
  const ids = await Promise.all(
    pairs.map(async ([vm, to]) =>
      (await ferryOk<string>(['move-vm', vm, '--to', to, '--no-wait'], { lab: L.lab })).trim(),
    ),
  );
  return Promise.all(ids.map((id) => waitMigration(L, id, ['completed', 'failed', 'cancelled'], 240_000)));
}

test(`four moves into one host at once, ${ROUNDS} rounds each way: every move completes the first time`, async () => {
  for (const h of ['host-a', 'host-b']) await ferryOk(['host', 'set', h, '--max-live', '4'], { lab: L.lab });
  const names = ['c1', 'c2', 'c3', 'c4'];
  for (const n of names) await newProbe(n, 'host-a', ['--probe-no-writer']);
  await sleep(3000);
  for (let round = 1; round <= ROUNDS; round++) {
    for (const to of ['host-b', 'host-a']) {
      const recs = await moveAll(names.map((n) => [n, to]));
      for (const r of recs) {
        assert.equal(r.state, 'completed', `round ${round} → ${to}: ${r.vm} ${JSON.stringify(r.error)}`);
      }
    }
  }
  for (const n of names) {
    assert.equal((await show(n)).host, 'host-a');
    await ferryOk(['vm', 'stop', n, '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', n], { lab: L.lab });
  }
});

test('crossing moves at the limit (two A→B, two B→A, max-live 2 each) all complete', async () => {
  for (const h of ['host-a', 'host-b']) await ferryOk(['host', 'set', h, '--max-live', '2'], { lab: L.lab });
  await newProbe('xa1', 'host-a', ['--probe-no-writer']);
  await newProbe('xa2', 'host-a', ['--probe-no-writer']);
  await newProbe('xb1', 'host-b', ['--probe-no-writer']);
  await newProbe('xb2', 'host-b', ['--probe-no-writer']);
  await sleep(3000);
  const recs = await moveAll([
    ['xa1', 'host-b'],
    ['xa2', 'host-b'],
    ['xb1', 'host-a'],
    ['xb2', 'host-a'],
  ]);
  for (const r of recs) assert.equal(r.state, 'completed', `${r.vm}: ${JSON.stringify(r.error)}`);
  assert.equal((await show('xa1')).host, 'host-b');
  assert.equal((await show('xb2')).host, 'host-a');
  for (const n of ['xa1', 'xa2', 'xb1', 'xb2']) {
    await ferryOk(['vm', 'stop', n, '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', n], { lab: L.lab });
  }
});

test(
  'two storage moves into one folder at once: one wins, the other is refused, ' + 'both keep every acked record',
  async () => {
    const local = path.join(hostData(L, 'host-a'), 'pools', 'local');
    const a = await newProbe('s1', 'host-a', [], path.join(local, 's1'));
    const b = await newProbe('s2', 'host-a', [], path.join(local, 's2'));
    await waitProbe(L, a, 20);
    await waitProbe(L, b, 20);
    // Both first disks have the same file name: the two moves want the same destination file.
    assert.equal(path.basename(a.disks[0]!.path), path.basename(b.disks[0]!.path));
    const target = path.join(L.lab, 'shared', 'together');
    const asked = await Promise.all(
      [a, b].map((vm) =>
        ferry(['move-storage', vm.name, '--vhd', `${vm.disks[0]!.path}=${target}/disk.qcow2`, '--no-wait'], {
          lab: L.lab,
        }),
      ),
    );
    // A move may be refused at once (the file is already there) or fail when it claims the file.
    const refusedNow = asked.filter((r) => r.code !== 0);
    for (const r of refusedNow) assert.match(r.stderr, /already there/);
    const recs = await Promise.all(
      asked
        .filter((r) => r.code === 0)
        .map((r) => waitMigration(L, r.stdout.trim(), ['completed', 'failed', 'cancelled'], 240_000)),
    );
    const won = recs.filter((r) => r.state === 'completed');
    const lost = recs.filter((r) => r.state === 'failed');
    assert.equal(won.length, 1, recs.map((r) => `${r.vm} ${r.state} ${JSON.stringify(r.error)}`).join('; '));
    assert.equal(lost.length + refusedNow.length, 1);
    for (const r of lost) assert.match(r.error?.message ?? '', /already there/);
    await sleep(1500);
    for (const vm of [a, b]) {
      const now = await show(vm.name);
      assert.equal(now.state, 'running', `${vm.name} still runs`);
      await ferryOk(['vm', 'stop', vm.name], { lab: L.lab });
      const acked = parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8')).highestAck;
      assert.ok(acked !== null && acked > 0);
      const rep = await verifyDiskImage(now.disks[0]!.path, { format: 'qcow2', highestAck: acked });
      assert.equal(rep.ok, true, `${vm.name}: ${rep.problems.join('; ')}`);
    }
    for (const n of ['s1', 's2']) await ferryOk(['vm', 'rm', n], { lab: L.lab });
  },
);
