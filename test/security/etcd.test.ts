// etcd access control (issue 14), played as the attacker would: with only host-b's own host
// certificate (a stolen host.key), straight against the cluster's etcd, after the
// administrator took host-b's right to lead away. Every attempt must be refused by etcd
// (permission denied), and the administrator's credential must read back that nothing changed.
// A 2-host cluster lab without VMs (real etcd with its access control, real agents).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Etcd3, EtcdPermissionDeniedError, type Namespace } from 'etcd3';
import { ferry, ferryOk } from '../e2e/cli.js';
import { sleep } from '../../src/util/exec.js';
import type { ClusterView } from '../../src/api/schemas.js';
import { labCredentials, type LabStatus } from '../../src/lab/lab.js';
import * as K from '../../src/cluster/keys.js';
import { labTempDir } from '../helpers.js';

let dir = '';
let lab = '';
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
  const st = await ferryOk<LabStatus>(['lab', 'up', '--dir', lab, '--hosts', '2', '--cluster', '--json']);
  endpoints = st.etcd.map((m) => m.endpoint);
  const creds = labCredentials(lab);
  admin = cluster(client(creds.ca, creds.cert, creds.key));
  // The administrator lets host-b stay in the cluster but no longer lead.
  await ferryOk(['cluster', 'join', 'lab', '--host', 'host-b', '--etcd', endpoints.join(','), '--no-lead'], { lab });
  attacker = asHost('host-b');
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

test('the host certificate works for what host-b owns (so the refusals below are not a broken login)', async () => {
  assert.ok(await evil.get(K.nodes.key('host-a')).string(), 'host-b reads the cluster');
  const mine = K.queue.key('host-b', 'probe-1');
  await evil.put(mine).value('{}').exec();
  await evil.delete().key(mine).exec();
  assert.equal(await admin.get(mine).string(), null);
});

test("host-b cannot write host-a's node key, delete it, or revoke host-a's lease", async () => {
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
  await denied('queue a move as host-a', () => evil.put(K.queue.key('host-a', 'forged')).value('{}').exec());
  // A transaction that mixes something allowed with something forbidden is refused whole.
  const mine = K.queue.key('host-b', 'probe-2');
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

test('host-b, not leader-eligible, cannot forge an HA record or any other cluster decision', async () => {
  const forged = K.vms.encode({
    name: 'forged',
    id: 'f0',
    configPath: '/shared/forged',
    owner: 'host-b',
    memoryMiB: 64,
    generation: 99,
    spec: { name: 'forged' },
  });
  await denied('put vms/forged', () => evil.put(K.vms.key('forged')).value(forged).exec());
  await denied('admit a move', () => evil.put(K.admits.key('forged')).value('{"at":"x"}').exec());
  await denied('write a drain', () => evil.put(K.batches.key('host-a')).value('{}').exec());
  await denied('pause host-a', () => evil.put(K.paused.key('host-a')).value('{}').exec());
  await denied('change the limits', () => evil.put(K.config.key).value('{"maxTotal":1}').exec());
  await denied('campaign', () => evil.put(`${K.election.prefix}${K.election.name}/1234`).value('host-b').exec());
  await denied('let itself lead', () => evil.put(K.leaders.key('host-b')).value('{"at":"x"}').exec());
  await denied('grant itself root', () => attacker.user('host-b').addRole('root'));
  await denied('turn access control off', () => attacker.auth.authDisable());
  for (const k of [
    K.vms.key('forged'),
    K.admits.key('forged'),
    K.batches.key('host-a'),
    K.paused.key('host-a'),
    K.config.key,
    K.leaders.key('host-b'),
  ])
    assert.equal(await admin.get(k).string(), null, `${k} was not written`);
  assert.equal(await admin.getAll().prefix(`${K.election.prefix}${K.election.name}/1234`).count(), 0);
});

test('the cluster goes on: both nodes up, host-a leads, host-b never does', async () => {
  let v: ClusterView | null = null;
  for (let i = 0; i < 60; i++) {
    v = await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab }).catch(() => null);
    if (v?.leader === 'host-a' && v.nodes.every((n) => n.state === 'up')) break;
    await sleep(250);
  }
  assert.equal(v?.leader, 'host-a');
  assert.deepEqual(
    v.nodes.map((n) => `${n.name}:${n.state}`),
    ['host-a:up', 'host-b:up'],
  );
  const leaders = await admin.getAll().prefix(K.leaders.prefix).keys();
  assert.deepEqual(leaders, [K.leaders.key('host-a')]);
});
