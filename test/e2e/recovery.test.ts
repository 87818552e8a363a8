// An agent killed in the middle of a move: after it restarts, the move is finished or rolled
// back by itself, the VM runs on exactly one host, and nothing is left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { ferryOk } from './cli.js';
import { useLab, hostData, serialLog, waitProbe, waitMigration } from './lab.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { hostQemuPids, type LabStatus } from '../../src/lab/lab.js';
import { sleep } from '../../src/util/exec.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

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
