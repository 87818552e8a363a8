// etcd access control (issue 14), played as the attacker would: with only host-c's own host
// certificate (a stolen host.key), straight against the cluster's etcd, after the
// administrator took host-c's right to lead away. Every attempt must be refused by etcd
// (permission denied), and the administrator's credential must read back that nothing changed.
// What etcd does not refuse — keeping another host's lease alive by its id — must not stop a
// fail-over: the leader also wants each node's beat (src/cluster/beats.ts).
// A 3-host cluster lab (real etcd with its access control, real agents), one HA probe VM.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Etcd3, EtcdPermissionDeniedError, type Namespace } from 'etcd3';
import { ferry, ferryOk } from '../e2e/cli.js';
import { sleep } from '../../src/util/exec.js';
import type { ClusterView } from '../../src/api/schemas.js';
import { hostQemuPids, labCredentials, type LabStatus } from '../../src/lab/lab.js';
import { EtcdStore } from '../../src/cluster/store.js';
import { runningFence } from '../../src/cluster/fence.js';
import { parseSerial } from '../../guest/records.js';
import type { VmView } from '../../src/api/schemas.js';
import * as K from '../../src/cluster/keys.js';
import { labTempDir } from '../helpers.js';

let dir = '';
let lab = '';
let st: LabStatus;
let endpoints: string[] = [];
const clients: Etcd3[] = [];

function client(ca: string, cert: string, key: string): Etcd3 {
  const c = new Etcd3({
    hosts: endpoints,
    credentials: {
      rootCertificate: fs.readFileSync(ca),
      certChain: fs.readFileSync(cert),
      privateKey: fs.readFileSync(key),
    },
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 5000 }),
  });
  clients.push(c);
  return c;
}
/** A host's own certificate, as its agent uses it. */
const asHost = (h: string): Etcd3 => {
  const tls = path.join(lab, 'hosts', h, 'data', 'tls');
  return client(path.join(tls, 'ca.crt'), path.join(tls, 'host.crt'), path.join(tls, 'host.key'));
};
const cluster = (c: Etcd3): Namespace => c.namespace('/ferry/clusters/lab/');

let admin: Namespace;
let attacker: Etcd3;
let evil: Namespace;

before(async () => {
  dir = await labTempDir('fse-');
  lab = path.join(dir, 'lab');
  st = await ferryOk<LabStatus>(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster', '--json']);
  endpoints = st.etcd.map((m) => m.endpoint);
  const creds = labCredentials(lab);
  admin = cluster(client(creds.ca, creds.cert, creds.key));
  // The administrator lets host-c stay in the cluster but no longer lead.
  await ferryOk(['cluster', 'join', 'lab', '--host', 'host-c', '--etcd', endpoints.join(','), '--no-lead'], { lab });
  attacker = asHost('host-c');
  evil = cluster(attacker);
});

after(async () => {
  for (const c of clients) c.close();
  if (lab) await ferry(['lab', 'down', '--dir', lab]);
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
});

/** The attempt is refused by etcd itself. */
async function denied(what: string, attempt: () => Promise<unknown>): Promise<void> {
  await assert.rejects(attempt(), (err: Error) => {
    assert.ok(err instanceof EtcdPermissionDeniedError, `${what}: ${err.constructor.name}: ${err.message}`);
    return true;
  });
}

test('the host certificate works for what host-c owns (so the refusals below are not a broken login)', async () => {
  assert.ok(await evil.get(K.nodes.key('host-a')).string(), 'host-c reads the cluster');
  const mine = K.queue.key('host-c', 'probe-1');
  await evil.put(mine).value('{}').exec();
  await evil.delete().key(mine).exec();
  assert.equal(await admin.get(mine).string(), null);
});

test("host-c cannot write host-a's node key, delete it, or revoke host-a's lease", async () => {
  const key = K.nodes.key('host-a');
  const before = await admin.get(key).exec();
  const kv = before.kvs[0];
  assert.ok(kv, 'host-a is up');
  await denied('put nodes/host-a', () =>
    evil
      .put(key)
      .value(K.nodes.encode({ endpoint: 'https://10.66.6.6:7443', since: new Date().toISOString() }))
      .exec(),
  );
  await denied('delete nodes/host-a', () => evil.delete().key(key).exec());
  // etcd refuses a lease revoke unless the caller may write every key on the lease.
  await denied("revoke host-a's lease", () => attacker.leaseClient.leaseRevoke({ ID: kv.lease }));
  await denied('delete members/host-a', () => evil.delete().key(K.members.key('host-a')).exec());
  await denied("forge host-a's beat", () =>
    evil
      .put(K.members.key('host-a'))
      .value(K.members.encode({ endpoint: 'https://10.66.6.6:7443', beat: Date.now() + 1e9 }))
      .exec(),
  );
  await denied('queue a move as host-a', () => evil.put(K.queue.key('host-a', 'forged')).value('{}').exec());
  // A transaction that mixes something allowed with something forbidden is refused whole.
  const mine = K.queue.key('host-c', 'probe-2');
  await denied('txn: own key + delete nodes/host-a', () =>
    evil.if(mine, 'Version', '==', 0).then(evil.put(mine).value('{}'), evil.delete().key(key)).commit(),
  );
  const afterRead = (await admin.get(key).exec()).kvs[0];
  assert.ok(afterRead, 'nodes/host-a still there');
  assert.equal(afterRead.value.toString(), kv.value.toString(), 'unchanged');
  assert.equal(afterRead.lease, kv.lease, 'on the same lease');
  assert.equal(afterRead.mod_revision, kv.mod_revision, 'never written');
  assert.equal(await admin.get(mine).string(), null, 'the allowed half of the refused transaction did not run');
  assert.equal(await admin.get(K.queue.key('host-a', 'forged')).string(), null);
  assert.ok(await admin.get(K.members.key('host-a')).string());
});

test('host-c, not leader-eligible, cannot forge an HA record or any other cluster decision', async () => {
  const forged = K.vms.encode({
    name: 'forged',
    id: 'f0',
    configPath: '/shared/forged',
    owner: 'host-c',
    memoryMiB: 64,
    generation: 99,
    spec: { name: 'forged' },
  });
  await denied('put vms/forged', () => evil.put(K.vms.key('forged')).value(forged).exec());
  await denied('admit a move', () => evil.put(K.admits.key('forged')).value('{"at":"x"}').exec());
  await denied('write a drain', () => evil.put(K.batches.key('host-a')).value('{}').exec());
  await denied('pause host-a', () => evil.put(K.paused.key('host-a')).value('{}').exec());
  await denied('change the limits', () => evil.put(K.config.key).value('{"maxTotal":1}').exec());
  await denied('campaign', () => evil.put(`${K.election.prefix}${K.election.name}/1234`).value('host-c').exec());
  await denied('let itself lead', () => evil.put(K.leaders.key('host-c')).value('{"at":"x"}').exec());
  await denied('grant itself root', () => attacker.user('host-c').addRole('root'));
  await denied('turn access control off', () => attacker.auth.authDisable());
  for (const k of [
    K.vms.key('forged'),
    K.admits.key('forged'),
    K.batches.key('host-a'),
    K.paused.key('host-a'),
    K.config.key,
    K.leaders.key('host-c'),
  ])
    assert.equal(await admin.get(k).string(), null, `${k} was not written`);
  assert.equal(await admin.getAll().prefix(`${K.election.prefix}${K.election.name}/1234`).count(), 0);
});

test('the cluster goes on: all nodes up, host-a or host-b leads, host-c never does', async () => {
  let v: ClusterView | null = null;
  for (let i = 0; i < 60; i++) {
    v = await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab }).catch(() => null);
    if (v?.leader && v.nodes.every((n) => n.state === 'up')) break;
    await sleep(250);
  }
  assert.ok(v?.leader === 'host-a' || v?.leader === 'host-b', `leader ${v?.leader}`);
  assert.deepEqual(
    v.nodes.map((n) => `${n.name}:${n.state}`),
    ['host-a:up', 'host-b:up', 'host-c:up'],
  );
  const leaders = await admin.getAll().prefix(K.leaders.prefix).keys();
  assert.deepEqual(leaders.sort(), [K.leaders.key('host-a'), K.leaders.key('host-b')]);
});

test(
  'the leader is killed and host-c keeps its node and election leases alive (etcd allows it): the other ' +
    'node takes the lead and fails its HA VM over, on the beat that stopped',
  async () => {
    const view = await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab });
    const victim = view.leader!;
    const survivor = victim === 'host-a' ? 'host-b' : 'host-a';
    const data = path.join(lab, 'hosts', victim, 'data');
    const vm = await ferryOk<VmView>(
      [
        'vm',
        'new',
        'ha1',
        '--host',
        victim,
        '--guest',
        'probe',
        '--ha',
        '--path',
        path.join(lab, 'shared', 'ha1'),
      ].concat(['--start', '--json']),
      { lab },
    );
    const log = (h: string): string => path.join(lab, 'hosts', h, 'data', 'run', vm.id, 'serial.log');
    const beats = async (h: string): Promise<number> =>
      parseSerial(await fsp.readFile(log(h), 'utf8').catch(() => '')).heartbeats.length;
    for (let i = 0; i < 300 && (await beats(victim)) < 10; i++) await sleep(200);
    const gen0 = (await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab })).vms.find(
      (x) => x.name === 'ha1',
    )!.generation;
    const nodeKey = (await admin.get(K.nodes.key(victim)).exec()).kvs[0];
    assert.ok(nodeKey, `${victim} is up`);
    const lease = nodeKey.lease;
    const election = `${K.election.prefix}${K.election.name}/`;
    const held = (await admin.getAll().prefix(election).sort('Create', 'Ascend').exec()).kvs;
    assert.equal(held[0]?.value.toString(), victim, 'the victim leads');
    const electionLease = held[0].lease;

    // The host dies whole: its agent, its fence and its QEMU, at once.
    const agentPid = st.hosts.find((h) => h.name === victim)?.agentPid ?? 0;
    const pids = [runningFence(data) ?? 0, agentPid, ...(await hostQemuPids(data))].filter((p) => p > 0);
    assert.ok(pids.length >= 3, `fence, agent and QEMU of ${victim}: ${pids.join(' ')}`);
    const t0 = Date.now();
    for (const p of pids) process.kill(p, 'SIGKILL');
    // …and host-c keeps its leases alive, as often as an agent would.
    const store = await EtcdStore.connect({
      endpoints,
      tls: (() => {
        const tls = path.join(lab, 'hosts', 'host-c', 'data', 'tls');
        return { ca: path.join(tls, 'ca.crt'), cert: path.join(tls, 'host.crt'), key: path.join(tls, 'host.key') };
      })(),
      prefix: '/ferry/clusters/lab/',
    });
    let kept = 0;
    const keep = { on: true };
    const keeper = (async (): Promise<void> => {
      while (keep.on) {
        await store.keepAliveOnce(lease, { timeoutMs: 1000 }).then(() => kept++);
        // Its election key may be gone (deposed): the lease is still there to keep.
        await store.keepAliveOnce(electionLease, { timeoutMs: 1000 }).catch(() => undefined);
        await sleep(500);
      }
    })();
    try {
      let restartedOn = '';
      let restartAt = 0;
      for (let i = 0; i < 300 && !restartedOn; i++) {
        for (const h of ['host-a', 'host-b', 'host-c'])
          if (h !== victim && (await beats(h)) > 0) {
            restartedOn = h;
            restartAt = Date.now() - t0;
          }
        await sleep(100);
      }
      const still = (await admin.get(K.nodes.key(victim)).exec()).kvs[0];
      const leadsNow = (await admin.getAll().prefix(election).sort('Create', 'Ascend').strings()) as Record<
        string,
        string
      >;
      process.stderr.write(
        `ha1: ${victim} killed; host-c sent ${kept} keepalives for its lease; ha1 beats on ` +
          `${restartedOn || 'no host'} after ${restartAt} ms\n`,
      );
      assert.equal(
        still?.lease,
        lease,
        `the lease of ${victim} was kept alive by host-c (its node key is still there)`,
      );
      assert.ok(kept > 5, 'host-c kept it alive');
      assert.equal(Object.values(leadsNow)[0], survivor, `${survivor} leads now`);
      assert.ok(!Object.values(leadsNow).includes(victim), "the victim's election key was deleted");
      assert.equal(restartedOn, survivor, 'failed over to the node that may keep it (host-c may not lead)');
      // Counted from the last beat: the beat's window, the fail-over and a cold boot.
      assert.ok(restartAt < 30_000, `in ${restartAt} ms`);
      // Read with the administrator's credential (the CLI may ask the dead host).
      const raw = await admin.get(K.vms.key('ha1')).string();
      const rec = raw === null ? null : K.vms.decode(K.vms.key('ha1'), raw);
      assert.ok(rec?.ok, raw ?? 'no record');
      assert.equal(rec.value.owner, survivor);
      assert.ok(rec.value.generation > gen0, `a new fencing generation (${gen0} → ${rec.value.generation})`);
      assert.deepEqual(await hostQemuPids(data), [], `nothing runs on ${victim}`);
      const there = await hostQemuPids(path.join(lab, 'hosts', survivor, 'data'));
      assert.equal(there.length, 1, `one copy, on ${survivor}`);
    } finally {
      keep.on = false;
      await keeper.catch(() => undefined);
      await store.close();
    }
  },
);
