// A hostile host (host-c, with only its own host certificate) against a real move between two
// other hosts (host-a → host-b, slowed with --bandwidth so it is in progress): it asks the
// destination to finish, abort, run the chain step of, show, or re-Prepare (same job id, naming
// itself as the source) that move, and the source to cancel it. Every call is refused with a 4xx
// and a clear message, while the real source's certificate is served; then the move completes
// untouched, the VM runs on exactly one host with every heartbeat and every acknowledged disk
// record, and host-c wrote nothing on host-b. A second move, cancelled by the administrator after
// the same attacks, rolls back: the VM runs on where it was, nothing is left on the destination.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type https from 'node:https';
import { ferry, ferryOk } from '../e2e/cli.js';
import {
  useLab,
  hostData,
  serialLog,
  waitProbe,
  assertHeartbeatsContinue,
  waitMigration,
  readLogs,
} from '../e2e/lab.js';
import { hostQemuPids } from '../../src/lab/lab.js';
import { configFile } from '../../src/vm/folder.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { sleep } from '../../src/util/exec.js';
import { get, hostAgent, post } from './host-client.js';

const L = useLab(3);
const agents: https.Agent[] = [];
after(() => {
  for (const a of agents) a.destroy();
});
const endpoint = (h: string): string => L.status.hosts.find((x) => x.name === h)!.endpoint;
const agentOf = (h: string): https.Agent => {
  const a = hostAgent(hostData(L, h));
  agents.push(a);
  return a;
};
const show = (name: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });

let vm: VmView;
const shared = (): string => path.join(L.lab, 'shared');

/** Every refusal a host that is neither end of move `id` (source `from`, destination `to`) meets. */
async function attack(id: string, from: string, to: string): Promise<string[]> {
  const mallory = agentOf('host-c');
  const said: string[] = [];
  const refused = (what: string, r: { status: number; body: string }, status: number, message: RegExp): void => {
    assert.equal(r.status, status, `${what}: ${r.body}`);
    assert.match(r.body, message, what);
    said.push(`${what}: ${r.status}`);
  };
  const notSource = new RegExp(`host 'host-c' is not its source '${from}'; a host may act only on the moves it sends`);
  const inc = `/v1/peer/incoming/${id}`;
  refused('finish', await post(mallory, endpoint(to), `${inc}/finish`, {}), 403, notSource);
  refused('abort', await post(mallory, endpoint(to), `${inc}/abort`, {}), 403, notSource);
  refused('chain', await post(mallory, endpoint(to), `${inc}/chain`, {}), 403, notSource);
  refused('view', await get(mallory, endpoint(to), inc), 403, notSource);
  // A Prepare that reuses the job id: naming the real source, or itself as the source.
  const spec = JSON.parse(await fsp.readFile(configFile(path.join(shared(), vm.name)), 'utf8')) as Record<
    string,
    unknown
  >;
  const folder = path.join(shared(), 'evil');
  const evil = { ...spec, name: 'evil', id: crypto.randomUUID(), configPath: folder, checkpointPath: folder };
  const prepare = (source: string): Promise<{ status: number; body: string }> =>
    post(mallory, endpoint(to), '/v1/peer/incoming', {
      jobId: id,
      source,
      spec: { ...evil, pagingPath: folder, disks: [] },
      tls: true,
      postcopy: false,
      storage: { disks: [], dirs: [folder], files: [] },
    });
  refused('prepare as the source', await prepare(from), 403, notSource);
  refused('prepare as itself', await prepare('host-c'), 403, notSource);
  // The source's side: neither end of the move may cancel it.
  refused(
    'cancel at the source',
    await post(mallory, endpoint(from), `/v1/migrations/${id}/cancel`, {}),
    403,
    /host 'host-c' does not receive it/,
  );
  refused(
    'cancel at the destination',
    await post(mallory, endpoint(to), `/v1/migrations/${id}/cancel`, {}),
    404,
    /E_MIGRATION_NOT_FOUND|no migration/i,
  );
  assert.equal(fs.existsSync(folder), false, 'host-c made no folder on the destination');
  // The real source's certificate is served (so the refusals are not a broken login).
  const own = await get(agentOf(from), endpoint(to), inc);
  assert.equal(own.status, 200, own.body);
  assert.match(own.body, /"state":"prepared"/);
  return said;
}

test('setup: a probe VM on the shared pool, running on host-a', async () => {
  vm = await ferryOk<VmView>(
    [
      'vm',
      'new',
      'pm1',
      '--host',
      'host-a',
      '--guest',
      'probe',
      '--path',
      path.join(shared(), 'pm1'),
      '--start',
    ].concat(['--json']),
    { lab: L.lab },
  );
  await waitProbe(L, vm, 10);
});

test("host-c cannot finish, abort, follow, re-Prepare or cancel host-a's move to host-b: it completes", async () => {
  const t0 = Date.now();
  const id = (
    await ferryOk<string>(['move-vm', 'pm1', '--to', 'host-b', '--bandwidth', '8', '--no-wait'], { lab: L.lab })
  ).trim();
  await waitMigration(L, id, ['copying-memory']);
  const said = await attack(id, 'host-a', 'host-b');
  const mid = await ferryOk<MigrationRecord>(['migration', 'show', id, '--json'], { lab: L.lab });
  assert.equal(mid.state, 'copying-memory', 'the attacks ran while the move was in progress');
  const done = await waitMigration(L, id, ['completed', 'failed', 'cancelled'], 240_000);
  assert.equal(done.state, 'completed', JSON.stringify(done.error));
  process.stderr.write(`move under attack: ${said.join(', ')}; completed in ${Date.now() - t0} ms\n`);

  const atB = await show('pm1');
  assert.deepEqual([atB.host, atB.state], ['host-b', 'running']);
  assert.deepEqual(await hostQemuPids(hostData(L, 'host-a')), [], 'no QEMU left on host-a');
  assert.deepEqual(await hostQemuPids(hostData(L, 'host-c')), [], 'none on host-c');
  assert.equal((await hostQemuPids(hostData(L, 'host-b'))).length, 1, 'exactly one on host-b');
  const endA = (await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8')).length;
  await waitProbe(L, atB, 10).catch(async (err: unknown) => {
    const tail = (h: string): Promise<string> =>
      fsp.readFile(serialLog(L, h, vm.id), 'utf8').then((t) => t.slice(-600), String);
    throw new Error(`${String(err)}; host-a: ${await tail('host-a')}; host-b: ${await tail('host-b')}`);
  });
  const a = (await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8')).slice(0, endA);
  assertHeartbeatsContinue([a + (await fsp.readFile(serialLog(L, 'host-b', vm.id), 'utf8'))]);
  const moves = await ferryOk<MigrationRecord[]>(['migration', 'list', '--all', '--json'], { lab: L.lab });
  assert.deepEqual(
    moves.map((r) => `${r.vm}:${r.source}>${r.destination}:${r.state}`),
    ['pm1:host-a>host-b:completed'],
  );
});

test('the same attacks on a move the administrator then cancels: it rolls back, the VM runs on', async () => {
  const id = (
    await ferryOk<string>(['move-vm', 'pm1', '--to', 'host-a', '--bandwidth', '2', '--no-wait'], { lab: L.lab })
  ).trim();
  await waitMigration(L, id, ['copying-memory']);
  await attack(id, 'host-b', 'host-a');
  const cancelled = await ferryOk<MigrationRecord>(['migration', 'cancel', id, '--json'], { lab: L.lab });
  assert.equal(cancelled.state, 'cancelled');
  const atB = await show('pm1');
  assert.deepEqual([atB.host, atB.state], ['host-b', 'running']);
  assert.deepEqual(await hostQemuPids(hostData(L, 'host-a')), [], 'nothing left on host-a');
  const before = parseSerial(await fsp.readFile(serialLog(L, 'host-b', vm.id), 'utf8')).heartbeats.length;
  await sleep(1500);
  const beats = parseSerial(await fsp.readFile(serialLog(L, 'host-b', vm.id), 'utf8')).heartbeats.length;
  assert.ok(beats > before + 10, `still running on host-b (${before} → ${beats} heartbeats)`);

  await ferryOk(['vm', 'stop', 'pm1'], { lab: L.lab });
  const ack = Math.max(...(await readLogs(L, vm.id)).map((t) => parseSerial(t).highestAck ?? 0));
  assert.ok(ack > 0);
  const report = await verifyDiskImage(vm.disks[0]!.path, { format: 'qcow2', highestAck: ack });
  assert.equal(report.ok, true, report.problems.join('; '));
  const r = await ferry(['vm', 'rm', 'pm1'], { lab: L.lab });
  assert.equal(r.code, 0, r.stderr);
});
