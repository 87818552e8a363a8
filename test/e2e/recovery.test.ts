// An agent killed in the middle of a move: after it restarts, the move is finished or rolled
// back by itself, the VM runs on exactly one host, and nothing is left behind. Also a move
// cancelled while the destination prepares. The agents' test hook (FERRY_TEST_HOLD_DIR,
// src/migration/policy.ts) holds the destination's Prepare at its QEMU's start.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ferryOk } from './cli.js';
import { useLab, hostData, serialLog, waitProbe, waitMigration } from './lab.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { hostQemuPids, type LabStatus } from '../../src/lab/lab.js';
import { qemusOfRunDir } from '../../src/qemu/process.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { sleep } from '../../src/util/exec.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

// Before the lab starts: every agent it starts (also those `lab up` restarts) gets the hook.
const holds = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-holds-'));
process.env.FERRY_TEST_HOLD_DIR = holds;
after(() => fs.rmSync(holds, { recursive: true, force: true }));
const L = useLab(2, { vmsPerTest: true });
const show = (name: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });

const waitState = (id: string, states: string[], timeoutMs = 60_000): Promise<MigrationRecord> =>
  waitMigration(L, id, states, timeoutMs);

async function killAgent(host: string): Promise<void> {
  const st = await ferryOk<LabStatus>(['lab', 'status', '--dir', L.lab, '--json']);
  process.kill(st.hosts.find((h) => h.name === host)!.agentPid!, 'SIGKILL');
  await sleep(300);
}

async function assertOnAOnly(vm: VmView): Promise<void> {
  const v = await show(vm.name);
  assert.equal(v.host, 'host-a');
  assert.equal(v.state, 'running');
  assert.equal((await hostQemuPids(hostData(L, 'host-a'))).length, 1);
  assert.deepEqual(await hostQemuPids(hostData(L, 'host-b')), [], 'no QEMU left on host-b');
  // Also none that no pid file names (one a killed agent started but never recorded).
  assert.deepEqual(qemusOfRunDir(path.join(hostData(L, 'host-b'), 'run')), [], 'no QEMU of host-b at all');
  assert.deepEqual(
    (await ferryOk<VmView[]>(['vm', 'list', '--host', 'host-b', '--json'], { lab: L.lab })).map((x) => x.name),
    [],
  );
  const before = parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8')).heartbeats.length;
  await sleep(1000);
  assert.ok(
    parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8')).heartbeats.length > before + 10,
    'the guest runs',
  );
}

test('the source agent killed during the memory copy: after its restart the move is rolled back', async () => {
  const vm = await ferryOk<VmView>(['vm', 'new', 'r1', '--host', 'host-a', '--guest', 'probe', '--start', '--json'], {
    lab: L.lab,
  });
  await waitProbe(L, vm, 10);
  const id = (
    await ferryOk<string>(['move-vm', 'r1', '--to', 'host-b', '--include-storage', '--bandwidth', '2', '--no-wait'], {
      lab: L.lab,
    })
  ).trim();
  await waitState(id, ['copying-memory']);
  await killAgent('host-a');
  await sleep(2000); // the stream goes on without its agent
  await ferryOk(['lab', 'up', '--dir', L.lab]);
  const r = await waitState(id, ['failed', 'cancelled', 'completed']);
  assert.equal(r.state, 'failed');
  assert.equal(r.error?.code, 'E_AGENT_RESTARTED');
  assert.match(r.error.message, /rolled back/);
  await assertOnAOnly(vm);
  // host-b keeps only the half-written disk images, each named by a marker, for the retry to
  // resume from (docs/moves.md, "Resumable disk copy"): no vm.json, nothing else.
  const folder = `${hostData(L, 'host-b')}/pools/local/r1`;
  const markers = `${hostData(L, 'host-b')}/resume`;
  const kept = new Set(
    (fs.existsSync(markers) ? fs.readdirSync(markers) : [])
      .filter((f) => f.endsWith('.json'))
      .map((f) => (JSON.parse(fs.readFileSync(`${markers}/${f}`, 'utf8')) as { path: string }).path),
  );
  for (const f of fs.existsSync(folder) ? fs.readdirSync(folder) : [])
    assert.ok(kept.has(`${folder}/${f}`), `host-b's ${f} is a kept image with a marker, or gone`);
  // A retry succeeds.
  const ok = await ferryOk<MigrationRecord>(['move-vm', 'r1', '--to', 'host-b', '--include-storage', '--json'], {
    lab: L.lab,
  });
  assert.equal(ok.state, 'completed', JSON.stringify(ok.error));
  await ferryOk(['vm', 'stop', 'r1'], { lab: L.lab });
  const v = await show('r1');
  const logs = await Promise.all(
    ['host-a', 'host-b'].map((h) => fsp.readFile(serialLog(L, h, vm.id), 'utf8').catch(() => '')),
  );
  const ack = Math.max(...logs.map((t) => parseSerial(t).highestAck ?? 0));
  assert.equal((await verifyDiskImage(v.disks[0]!.path, { format: 'qcow2', highestAck: ack })).ok, true);
  await ferryOk(['vm', 'rm', 'r1'], { lab: L.lab });
});

test(
  'the destination agent killed during the memory copy: the VM stays on the source, the ' +
    'destination cleans up when it restarts',
  async () => {
    const vm = await ferryOk<VmView>(
      ['vm', 'new', 'r2', '--host', 'host-a', '--guest', 'probe', '--path', `${L.lab}/shared/r2`, '--start', '--json'],
      { lab: L.lab },
    );
    await waitProbe(L, vm, 10);
    const id = (
      await ferryOk<string>(['move-vm', 'r2', '--to', 'host-b', '--bandwidth', '4', '--no-wait'], { lab: L.lab })
    ).trim();
    await waitState(id, ['copying-memory']);
    await killAgent('host-b');
    const r = await waitState(id, ['failed', 'cancelled', 'completed'], 120_000);
    assert.equal(r.state, 'failed', JSON.stringify(r));
    const v = await show('r2');
    assert.equal(v.host, 'host-a');
    assert.equal(v.state, 'running');
    await ferryOk(['lab', 'up', '--dir', L.lab]);
    for (let i = 0; i < 50 && (await hostQemuPids(hostData(L, 'host-b'))).length; i++) await sleep(200);
    await assertOnAOnly(vm);
    const ok = await ferryOk<MigrationRecord>(['move-vm', 'r2', '--to', 'host-b', '--json'], { lab: L.lab });
    assert.equal(ok.state, 'completed', JSON.stringify(ok.error));
    await ferryOk(['vm', 'stop', 'r2', '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', 'r2'], { lab: L.lab });
  },
);

/** Holds the destination's Prepare at `point` until the returned function is called. */
async function holdAt(point: string): Promise<{ held: () => Promise<void>; release: () => Promise<void> }> {
  await fsp.writeFile(path.join(holds, point), '');
  return {
    held: async () => {
      for (let i = 0; i < 600 && !fs.existsSync(path.join(holds, `${point}.held`)); i++) await sleep(100);
      assert.ok(fs.existsSync(path.join(holds, `${point}.held`)), `the destination reached ${point}`);
    },
    release: () => fsp.rm(path.join(holds, point), { force: true }),
  };
}

test('a move cancelled while the destination prepares: its Prepare stops, no QEMU starts there later', async () => {
  const vm = await ferryOk<VmView>(
    ['vm', 'new', 'r3', '--host', 'host-a', '--guest', 'probe', '--path', `${L.lab}/shared/r3`, '--start', '--json'],
    { lab: L.lab },
  );
  await waitProbe(L, vm, 10);
  const h = await holdAt('incoming-qemu');
  try {
    const id = (await ferryOk<string>(['move-vm', 'r3', '--to', 'host-b', '--no-wait'], { lab: L.lab })).trim();
    await h.held();
    await ferryOk(['migration', 'cancel', id], { lab: L.lab });
    const r = await waitState(id, ['failed', 'cancelled', 'completed']);
    assert.equal(r.state, 'cancelled', JSON.stringify(r));
  } finally {
    await h.release();
  }
  // Had the abort not stopped Prepare, it would start the VM's QEMU now, on nobody's behalf.
  await sleep(3000);
  await assertOnAOnly(vm);
  assert.equal(fs.existsSync(path.join(hostData(L, 'host-b'), 'run', vm.id)), false, 'host-b has no run folder of r3');
  const ok = await ferryOk<MigrationRecord>(['move-vm', 'r3', '--to', 'host-b', '--json'], { lab: L.lab });
  assert.equal(ok.state, 'completed', JSON.stringify(ok.error));
  await ferryOk(['vm', 'stop', 'r3', '--force'], { lab: L.lab });
  await ferryOk(['vm', 'rm', 'r3'], { lab: L.lab });
});

test(
  'the destination agent killed after it started the incoming QEMU, before its journal named it: ' +
    'its restart stops that QEMU',
  async () => {
    const vm = await ferryOk<VmView>(
      ['vm', 'new', 'r4', '--host', 'host-a', '--guest', 'probe', '--path', `${L.lab}/shared/r4`, '--start', '--json'],
      { lab: L.lab },
    );
    await waitProbe(L, vm, 10);
    const h = await holdAt('incoming-spawned');
    let id: string;
    try {
      id = (await ferryOk<string>(['move-vm', 'r4', '--to', 'host-b', '--no-wait'], { lab: L.lab })).trim();
      await h.held();
      const started = qemusOfRunDir(path.join(hostData(L, 'host-b'), 'run', vm.id));
      assert.equal(started.length, 1, 'the incoming QEMU runs');
      await killAgent('host-b');
    } finally {
      await h.release();
    }
    const r = await waitState(id, ['failed', 'cancelled', 'completed'], 120_000);
    assert.equal(r.state, 'failed', JSON.stringify(r));
    await ferryOk(['lab', 'up', '--dir', L.lab]);
    await assertOnAOnly(vm);
    const ok = await ferryOk<MigrationRecord>(['move-vm', 'r4', '--to', 'host-b', '--json'], { lab: L.lab });
    assert.equal(ok.state, 'completed', JSON.stringify(ok.error));
    await ferryOk(['vm', 'stop', 'r4', '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', 'r4'], { lab: L.lab });
  },
);

// A resumable storage move pauses its guest for the last pass and the switch
// (kinds/storage-resume.ts): an agent killed then must not leave the guest paused. The
// restarted agent resumes it, rolls the move back keeping the copy, and the retry resumes it.
test('the agent killed while a storage move holds the guest paused for its switch: a restart resumes it', async () => {
  const vm = await ferryOk<VmView>(['vm', 'new', 'r5', '--host', 'host-a', '--guest', 'probe', '--start', '--json'], {
    lab: L.lab,
  });
  await waitProbe(L, vm, 10);
  const to = path.join(hostData(L, 'host-a'), 'pools', 'local', 'r5-moved');
  const move = ['move-storage', 'r5', '--path', to, '--resumable', 'always'];
  const h = await holdAt('storage-paused');
  let id: string;
  try {
    id = (await ferryOk<string>([...move, '--no-wait'], { lab: L.lab })).trim();
    await h.held();
    const qmp = await QmpClient.connect(path.join(hostData(L, 'host-a'), 'run', vm.id, 'qmp-admin.sock'), {
      vm: 'r5',
    });
    try {
      assert.equal((await qmp.execute('query-status')).status, 'paused', 'the switch paused the guest');
    } finally {
      qmp.close();
    }
    await killAgent('host-a');
  } finally {
    await h.release();
  }
  await ferryOk(['lab', 'up', '--dir', L.lab]);
  const r = await waitState(id, ['failed', 'cancelled', 'completed'], 120_000);
  assert.equal(r.state, 'failed', JSON.stringify(r));
  assert.equal(r.error?.code, 'E_AGENT_RESTARTED');
  assert.ok(
    r.events.some((e) => /paused for the switch, runs again/.test(e.message)),
    JSON.stringify(r.events.map((e) => e.message)),
  );
  await assertOnAOnly(vm);
  assert.deepEqual(
    (await show('r5')).disks.map((d) => d.path),
    vm.disks.map((d) => d.path),
    'the disks stay where they were',
  );
  // The retry resumes the kept copy: only what the guest wrote since is copied again.
  const ok = await ferryOk<MigrationRecord>([...move, '--json'], { lab: L.lab, timeoutMs: 120_000 });
  assert.equal(ok.state, 'completed', JSON.stringify(ok.error));
  const resumed = ok.disks.filter((d) => d.resumed);
  assert.equal(resumed.length, vm.disks.length, JSON.stringify(ok.events.map((e) => e.message)));
  await ferryOk(['vm', 'stop', 'r5', '--force'], { lab: L.lab });
  const v = await show('r5');
  assert.equal(path.dirname(v.disks[0]!.path), to);
  const ack = parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8')).highestAck ?? 0;
  assert.ok(ack > 0);
  assert.equal((await verifyDiskImage(v.disks[0]!.path, { format: 'qcow2', highestAck: ack })).ok, true);
  await ferryOk(['vm', 'rm', 'r5'], { lab: L.lab });
});
