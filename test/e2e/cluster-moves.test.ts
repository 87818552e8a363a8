// Moves into, out of and between clusters, and storage moves of HA VMs (issue 18, items 2 and 3).
// One lab (one domain), four hosts: cluster 'prod' = host-a + host-b, cluster 'other' = host-c,
// host-d in no cluster. Each cluster has its own one-member etcd, run outside the hosts, so
// killing a host (`lab kill`) leaves its cluster's store up.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { waitSerial } from './lab.js';
import { startMembers, stopLabMembers } from '../../src/cluster/etcd-members.js';
import { sleep } from '../../src/util/exec.js';
import type { ClusterView } from '../../src/api/schemas.js';
import { labTempDir } from '../helpers.js';

let dir = '';
let lab = '';

interface Vm {
  id: string;
  host: string;
  ha: boolean;
  state: string;
  configPath: string;
  disks: Array<{ path: string }>;
}
interface Move {
  state: string;
  events: Array<{ message: string }>;
}

const show = (vm: string): Promise<Vm> => ferryOk<Vm>(['vm', 'show', vm, '--json'], { lab });
const prodRecord = async (vm: string): Promise<ClusterView['vms'][number] | undefined> =>
  (await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab })).vms.find((x) => x.name === vm);
const move = (vm: string, to: string): Promise<Move> =>
  // The bootblock guests dirty their whole memory without pause: a loaded machine's TLS stream
  // may not fit them in the default 300 ms, and these tests are about the cluster's records.
  ferryOk<Move>(['move-vm', vm, '--to', to, '--max-downtime', '5000', '--json'], { lab, timeoutMs: 300_000 });
const logOf = (m: Move): string => m.events.map((e) => e.message).join('\n');

async function waitNodes(n: number): Promise<void> {
  for (let i = 0; i < 120; i++) {
    const v = await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab });
    if (v.nodes.length === n && v.nodes.every((x) => x.state === 'up') && v.leader) return;
    await sleep(250);
  }
  assert.fail('the cluster came up');
}

before(async () => {
  dir = await labTempDir('fcm-');
  lab = path.join(dir, 'lab');
  await ferryOk(['lab', 'up', '--dir', lab, '--hosts', '4']);
  const domainDir = path.join(lab, 'domain');
  const [prod] = await startMembers({
    labDir: path.join(dir, 'etcd-prod'),
    hosts: ['p1'],
    domainDir,
    timeoutMs: 60_000,
  });
  const [other] = await startMembers({
    labDir: path.join(dir, 'etcd-other'),
    hosts: ['o1'],
    domainDir,
    timeoutMs: 60_000,
  });
  await ferryOk(['cluster', 'create', 'prod', '--host', 'host-a', '--etcd', prod!.clientUrl], { lab });
  await ferryOk(['cluster', 'join', 'prod', '--host', 'host-b', '--etcd', prod!.clientUrl], { lab });
  await ferryOk(['cluster', 'create', 'other', '--host', 'host-c', '--etcd', other!.clientUrl], { lab });
  await waitNodes(2);
});

after(async () => {
  if (!dir) return;
  await ferry(['lab', 'down', '--dir', lab]);
  await stopLabMembers(path.join(dir, 'etcd-prod'), { graceMs: 5000 }).catch(() => undefined);
  await stopLabMembers(path.join(dir, 'etcd-other'), { graceMs: 5000 }).catch(() => undefined);
  await fsp.rm(dir, { recursive: true, force: true });
});

test('an HA VM is refused on storage other nodes cannot see: vm new --ha, move-storage to a local pool', async () => {
  const local = await ferry(['vm', 'new', 'loc', '--host', 'host-a', '--guest', 'bootblock', '--ha'], { lab });
  assert.notEqual(local.code, 0);
  assert.match(local.stderr, /Cannot create HA VM 'loc': .* is in local pool 'local', so no other node could restart/);
  assert.match(local.stderr, /put its folder and disks on a shared pool \(--path .*shared/);
  assert.equal((await ferry(['vm', 'show', 'loc'], { lab })).code, 4, 'nothing was created');

  await ferryOk(
    ['vm', 'new', 'hs', '--host', 'host-a', '--guest', 'bootblock', '--ha', '--path', path.join(lab, 'shared', 'hs')],
    { lab },
  );
  const pools = await ferryOk<Array<{ name: string; kind: string; path: string }>>(
    ['pool', 'list', '--host', 'host-a', '--json'],
    { lab },
  );
  const localPool = pools.find((p) => p.kind === 'local');
  assert.ok(localPool, 'host-a has a local pool');
  const refused = await ferry(['move-storage', 'hs', '--path', path.join(localPool.path, 'hs')], { lab });
  assert.notEqual(refused.code, 0, refused.stdout);
  assert.match(refused.stderr, /Cannot move storage of HA VM 'hs': .* is in local pool/);
  assert.match(refused.stderr, /choose a shared pool .*or first make it not HA \('ferry cluster remove-vm hs'\)/);
  assert.equal((await show('hs')).configPath, path.join(lab, 'shared', 'hs'), 'the VM did not move');
  // Shared nothing inside the cluster, to host-b's local pool: the destination refuses it too.
  const localB = (
    await ferryOk<Array<{ kind: string; path: string }>>(['pool', 'list', '--host', 'host-b', '--json'], { lab })
  ).find((p) => p.kind === 'local');
  assert.ok(localB, 'host-b has a local pool');
  const sn = await ferry(
    ['move-vm', 'hs', '--to', 'host-b', '--include-storage', '--storage-path', path.join(localB.path, 'hs')],
    { lab },
  );
  assert.notEqual(sn.code, 0, sn.stdout);
  assert.match(sn.stderr, /Cannot receive HA VM 'hs' on host 'host-b': .* is in local pool/);
  assert.equal((await show('hs')).host, 'host-a', 'the VM stayed');
  await ferryOk(['vm', 'rm', 'hs'], { lab });
});

test(
  'moves into, out of and between clusters: HA kept inside prod, cleared leaving it (record deleted, ' +
    'the log says so), not made HA arriving in another cluster or from a standalone host; add-vm makes it HA',
  async () => {
    await ferryOk(
      [
        'vm',
        'new',
        'mv',
        '--host',
        'host-a',
        '--guest',
        'bootblock',
        '--ha',
        '--path',
        path.join(lab, 'shared', 'mv'),
        '--start',
      ],
      { lab },
    );
    assert.equal((await prodRecord('mv'))?.owner, 'host-a');

    // Inside the cluster: stays HA, the record follows.
    await move('mv', 'host-b');
    assert.deepEqual([(await show('mv')).host, (await show('mv')).ha], ['host-b', true]);
    assert.equal((await prodRecord('mv'))?.owner, 'host-b');

    // prod → other: leaves prod (record gone), not HA in 'other'.
    const between = await move('mv', 'host-c');
    let v = await show('mv');
    assert.deepEqual([v.host, v.ha, v.state], ['host-c', false, 'running']);
    assert.equal(await prodRecord('mv'), undefined, 'the HA record left prod');
    assert.match(logOf(between), /mv left cluster 'prod': host-c is not a member; its HA record was deleted/);
    assert.match(
      logOf(between),
      /host-c: mv arrives not HA \(ha: false\): it comes from host-b, outside cluster 'other'/,
    );
    const onDisk = JSON.parse(await fsp.readFile(path.join(v.configPath, 'vm.json'), 'utf8')) as { ha: boolean };
    assert.equal(onDisk.ha, false, 'vm.json says it');

    // Made HA in 'other' on purpose, then out to a host in no cluster.
    await ferryOk(['cluster', 'add-vm', 'mv'], { lab });
    assert.equal((await show('mv')).ha, true);
    const out = await move('mv', 'host-d');
    v = await show('mv');
    assert.deepEqual([v.host, v.ha], ['host-d', false]);
    assert.match(logOf(out), /mv left cluster 'other'/);
    assert.match(logOf(out), /host-d: mv arrives not HA \(ha: false\)/);

    // A standalone host's VM whose config still says HA (as an old Ferry left it) arrives in prod not HA.
    await ferryOk(['vm', 'stop', 'mv', '--force'], { lab });
    const file = path.join(v.configPath, 'vm.json');
    await fsp.writeFile(file, JSON.stringify({ ...JSON.parse(await fsp.readFile(file, 'utf8')), ha: true }, null, 2));
    await ferryOk(['vm', 'start', 'mv'], { lab });
    const into = await move('mv', 'host-a');
    v = await show('mv');
    assert.deepEqual([v.host, v.ha], ['host-a', false]);
    assert.equal(await prodRecord('mv'), undefined, 'prod did not make it HA');
    assert.match(
      logOf(into),
      /host-a: mv arrives not HA \(ha: false\): it comes from host-d, outside cluster 'prod'; .*cluster add-vm mv/,
    );
    await ferryOk(['vm', 'stop', 'mv', '--force'], { lab });
    await ferryOk(['vm', 'rm', 'mv'], { lab });
  },
);

test(
  'storage move of an HA VM updates its cluster record; its host dies; it runs elsewhere from the new ' +
    'folder, every acked record intact',
  async () => {
    const { parseSerial, verifyDiskImage } = await import('../../guest/records.js');
    const { hostQemuPids } = await import('../../src/lab/lab.js');
    const from = path.join(lab, 'shared', 'sm1');
    const to = path.join(lab, 'shared', 'moved', 'sm1');
    const vm = await ferryOk<Vm>(
      ['vm', 'new', 'sm1', '--host', 'host-a', '--guest', 'probe', '--ha', '--path', from, '--start', '--json'],
      { lab },
    );
    const serial = (h: string): Promise<string> =>
      fsp.readFile(path.join(lab, 'hosts', h, 'data', 'run', vm.id, 'serial.log'), 'utf8').catch(() => '');
    const serialFile = (h: string): string => path.join(lab, 'hosts', h, 'data', 'run', vm.id, 'serial.log');
    await waitSerial(serialFile('host-a'), { acks: 10, lab, vm: 'sm1', host: 'host-a' });
    const sm = await ferryOk<Move>(['move-storage', 'sm1', '--path', to, '--json'], { lab, timeoutMs: 300_000 });
    assert.equal(sm.state, 'completed', logOf(sm));
    const moved = await show('sm1');
    assert.equal(moved.configPath, to);
    await assert.rejects(fsp.access(path.join(from, 'vm.json')), 'the old folder is gone');
    await waitSerial(serialFile('host-a'), { acks: 20, lab, vm: 'sm1', host: 'host-a' });

    await ferryOk(['lab', 'kill', 'host-a', '--dir', lab]);
    const ackA = parseSerial(await serial('host-a')).highestAck ?? 0;
    assert.ok(ackA > 0);
    const t0 = Date.now();
    let s = parseSerial('');
    while (Date.now() - t0 < 120_000 && s.writerStart === null) {
      await sleep(250);
      s = parseSerial(await serial('host-b'));
    }
    assert.ok(s.heartbeats.length > 0, 'the VM runs on host-b');
    process.stderr.write(`cluster-moves: host-a killed → sm1 writing on host-b after ${Date.now() - t0} ms\n`);
    assert.ok((s.writerStart ?? 0) > ackA, 'the writer continues after every record acknowledged on host-a');
    const v = await show('sm1');
    assert.deepEqual([v.host, v.state, v.configPath], ['host-b', 'running', to], 'restarted from the new folder');
    assert.equal((await hostQemuPids(path.join(lab, 'hosts', 'host-b', 'data'))).length, 1);
    await ferryOk(['vm', 'stop', 'sm1', '--force'], { lab });
    const ack = Math.max(ackA, parseSerial(await serial('host-b')).highestAck ?? 0);
    const report = await verifyDiskImage(moved.disks[0]!.path, { format: 'qcow2', highestAck: ack });
    assert.equal(report.ok, true, report.problems.join('; '));
  },
);
