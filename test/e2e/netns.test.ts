// A --netns lab (each host in its own network namespace, a management and a private
// migration network) and the fault-matrix cells CI runs (the whole matrix: npm run
// test:faults). The migration link of one host is cut mid-copy: the move fails with
// E_MIGRATION_STALLED instead of hanging, the VM keeps running on the source with every
// acknowledged record, and a retry after the link is restored succeeds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { waitProbe } from './lab.js';
import { labUp, runCell, useFaultLab } from '../faults/harness.js';
import { readStreamCounters, startStreamCounters, stopStreamCounters } from '../faults/stream-counters.js';
import { labNetId } from '../../src/lab/netns.js';
import type { LabStatus } from '../../src/lab/lab.js';
import type { HostView, VmView } from '../../src/api/schemas.js';

const L = useFaultLab();
const status = (): Promise<LabStatus> => ferryOk<LabStatus>(['lab', 'status', '--dir', L.lab, '--json']);

test(
  'each host runs in its own namespace: agents on the management network, streams on the migration ' + 'network',
  async () => {
    const st = await status();
    const id = labNetId(L.lab);
    assert.deepEqual(
      st.hosts.map((h) => h.netns),
      [`ferry-${id}-a`, `ferry-${id}-b`],
    );
    for (const h of st.hosts) {
      assert.equal(h.up, true);
      assert.match(h.endpoint, /^https:\/\/10\.241\.\d+\.\d+:7443$/);
      assert.match(h.migrationAddress!, /^10\.242\.\d+\.\d+$/);
      assert.deepEqual(h.links, { management: true, migration: true });
      const ns = execFileSync('ip', ['-n', h.netns!, '-o', '-4', 'addr', 'show'], { encoding: 'utf8' });
      assert.match(ns, /lo\s+inet 127\.0\.0\.1/, 'loopback is up inside');
      assert.ok(ns.includes(h.migrationAddress!));
      assert.equal(
        execFileSync('ip', ['-n', h.netns!, 'route', 'show', 'default'], { encoding: 'utf8' }).trim(),
        '',
        'no default route: nothing leaves the machine',
      );
      const view = await ferryOk<HostView>(['host', 'show', h.name, '--json'], { lab: L.lab });
      assert.equal(view.migration.address, h.migrationAddress);
      assert.deepEqual(view.migration.networks, [h.migrationAddress!.replace(/\.\d+$/, '.0/24')]);
    }
    // Cutting one link of one host shows in the status and is undone by restore.
    await ferryOk(['lab', 'cut', 'host-b', '--link', 'migration'], { lab: L.lab });
    assert.deepEqual(
      (await status()).hosts.map((h) => h.links),
      [
        { management: true, migration: true },
        { management: true, migration: false },
      ],
    );
    await ferryOk(['lab', 'restore', 'host-b', '--link', 'migration'], { lab: L.lab });
    assert.deepEqual(
      (await status()).hosts.map((h) => h.links?.migration),
      [true, true],
    );
    const bad = await ferry(['lab', 'cut', 'host-b', '--link', 'storage'], { lab: L.lab });
    assert.equal(bad.code, 2);
    // Power loss of one namespaced host, and back.
    await ferryOk(['lab', 'kill', 'host-b', '--dir', L.lab]);
    assert.deepEqual(
      (await status()).hosts.map((h) => h.up),
      [true, false],
    );
    assert.deepEqual(
      (await labUp(L)).hosts.map((h) => h.up),
      [true, true],
    );
  },
);

// Before any stream exists: the destination has no address in its migration networks (Node
// lists only links that are up and running) and must refuse, not listen on its management address.
test('a move to a host whose migration link is down fails: no fall-back to the management network', async () => {
  const ns = (await status()).hosts.find((h) => h.name === 'host-b')?.netns;
  assert.ok(ns);
  const vm = await ferryOk<VmView>(
    [
      'vm',
      'new',
      'nc0',
      '--host',
      'host-a',
      '--guest',
      'probe',
      '--path',
      path.join(L.lab, 'shared', 'nc0'),
      '--start',
      '--json',
    ],
    { lab: L.lab },
  );
  try {
    await waitProbe(L, vm, 5, 90_000);
    await ferryOk(['lab', 'cut', 'host-b', '--link', 'migration'], { lab: L.lab });
    await startStreamCounters(ns);
    const r = await ferry(['move-vm', 'nc0', '--to', 'host-b', '--json'], { lab: L.lab, timeoutMs: 180_000 });
    assert.notEqual(r.code, 0, 'the move fails');
    assert.match(r.stdout + r.stderr, /E_MIGRATION_NETWORK|none of its addresses is in its migration networks/);
    if (r.stdout.trim()) assert.equal((JSON.parse(r.stdout) as { state: string }).state, 'failed');
    assert.deepEqual(await readStreamCounters(ns), { migration: 0, management: 0, loopback: 0 });
    const v = await ferryOk<VmView>(['vm', 'show', 'nc0', '--json'], { lab: L.lab });
    assert.deepEqual([v.host, v.state], ['host-a', 'running']);
    const there = await ferryOk<VmView[]>(['vm', 'list', '--host', 'host-b', '--json'], { lab: L.lab });
    assert.ok(!there.some((x) => x.name === 'nc0'), 'nothing left on host-b');
  } finally {
    await stopStreamCounters(ns);
    await ferry(['lab', 'restore', 'host-b', '--link', 'migration'], { lab: L.lab });
    await ferry(['vm', 'stop', 'nc0', '--force'], { lab: L.lab });
    await ferry(['vm', 'rm', 'nc0'], { lab: L.lab });
  }
});

// CI's share of the matrix: one cell per kind and the two the issue names. The migration network
// cuts must fail (expect.ts), with no stream byte reaching host-b but on its migration network.
test('live × copying-memory × migration network cut', async () => {
  await runCell(L, 'live', 'copying-memory', 'migration-net-cut');
});
test('shared-nothing × copying-storage × migration network cut', async () => {
  await runCell(L, 'shared-nothing', 'copying-storage', 'migration-net-cut');
});
test('shared-nothing × switching-over × source agent killed', async () => {
  await runCell(L, 'shared-nothing', 'switching-over', 'source-agent-killed');
});
test('storage × copying-storage × destination disk full', async () => {
  await runCell(L, 'storage', 'copying-storage', 'dest-disk-full');
});

test('lab down removes the namespaces, veths and bridges', async () => {
  await ferryOk(['lab', 'down', '--dir', L.lab]);
  const id = labNetId(L.lab);
  assert.ok(!execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(`ferry-${id}-`));
  assert.ok(!execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).includes(`fy${id}`));
  const again = await ferry(['lab', 'down', '--dir', L.lab]);
  assert.equal(again.code, 0, 'down is idempotent');
});
