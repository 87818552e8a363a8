// A hostile cluster node with only its own host certificate: it neither leads nor owns the
// HA VM, and asks the leader's agent and its own to HA-start that VM with the record's own
// spec and generation. Both refuse (the cluster's record gives the VM to its owner), no QEMU
// starts, and the record and the inventory stay as they were. Then it asks the owner to predict
// that VM's move (which would sample the guest's memory): refused, while the plain compare a
// drain needs is still answered. 3-host cluster lab, real etcd.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from '../e2e/cli.js';
import { hostData, type TestLab } from '../e2e/lab.js';
import { hostQemuPids, type LabStatus } from '../../src/lab/lab.js';
import { configFile } from '../../src/vm/folder.js';
import { sleep } from '../../src/util/exec.js';
import type { ClusterView, VmView } from '../../src/api/schemas.js';
import { labTempDir } from '../helpers.js';
import { hostAgent, post } from './host-client.js';

const L: TestLab = { dir: '', lab: '', status: { dir: '', hosts: [], etcd: [] } };
before(async () => {
  L.dir = await labTempDir('ferry-sec-ha-');
  L.lab = path.join(L.dir, 'lab');
  L.status = await ferryOk<LabStatus>(['lab', 'up', '--dir', L.lab, '--hosts', '3', '--cluster', '--json']);
});
after(async () => {
  await ferry(['lab', 'down', '--dir', L.lab]);
  await fsp.rm(L.dir, { recursive: true, force: true });
});

test("a non-leader node cannot HA-start a VM the cluster's record does not give the target", async () => {
  const status = (): Promise<ClusterView> => ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab: L.lab });
  const leader = (await status()).leader;
  assert.ok(leader, 'the cluster has a leader');
  const others = L.status.hosts.map((h) => h.name).filter((h) => h !== leader);
  const [owner, mallory] = others as [string, string];
  const folder = path.join(L.lab, 'shared', 'ha1');
  // The cluster records an HA VM while it runs (a stopped one has no record).
  await ferryOk(
    ['vm', 'new', 'ha1', '--host', owner, '--guest', 'probe', '--ha', '--path', folder, '--start', '--json'],
    { lab: L.lab },
  );
  let before = (await status()).vms.find((v) => v.name === 'ha1');
  for (let i = 0; i < 60 && !before; i++) {
    await sleep(500);
    before = (await status()).vms.find((v) => v.name === 'ha1');
  }
  assert.ok(before, 'ha1 has a cluster record');
  assert.equal(before.owner, owner);
  const spec = JSON.parse(await fsp.readFile(configFile(folder), 'utf8')) as unknown;

  const agent = hostAgent(hostData(L, mallory));
  for (const target of [leader, mallory]) {
    const endpoint = L.status.hosts.find((h) => h.name === target)!.endpoint;
    // A forged fail-over: the next generation, as a leader's restart decision would carry.
    const generation = before.generation + 1;
    const r = await post(agent, endpoint, '/v1/peer/ha-start', { spec, generation, from: owner });
    assert.equal(r.status, 403, `${target}: ${r.body}`);
    assert.match(r.body, /E_FORBIDDEN/);
    assert.match(r.body, /the cluster's record does not give it to this host/);
  }
  agent.destroy();

  for (const h of [leader, mallory]) assert.deepEqual(await hostQemuPids(hostData(L, h)), [], `no QEMU on ${h}`);
  const vms = await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab: L.lab });
  assert.deepEqual(
    vms.filter((v) => v.name === 'ha1').map((v) => `${v.host}:${v.state}`),
    [`${owner}:running`],
  );
  const after = (await status()).vms.find((v) => v.name === 'ha1');
  assert.deepEqual([after?.owner, after?.generation], [owner, before.generation], 'the record is unchanged');
});

test("a node may compare another's VM for a move, but not have its memory measured for a prediction", async () => {
  const leader = (await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab: L.lab })).leader;
  assert.ok(leader, 'the cluster has a leader');
  const vm = (await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab: L.lab })).find((v) => v.name === 'ha1');
  assert.ok(vm, 'ha1 from the test before');
  const mallory = L.status.hosts.map((h) => h.name).find((h) => h !== leader && h !== vm.host);
  assert.ok(mallory, 'a node that neither leads nor runs ha1');
  const at = (h: string): string => L.status.hosts.find((x) => x.name === h)!.endpoint;
  const agent = hostAgent(hostData(L, mallory));
  const body = { vm: 'ha1', to: { name: leader, endpoint: at(leader) }, options: {} };
  const refused = await post(agent, at(vm.host), '/v1/compare', { ...body, predict: true });
  assert.equal(refused.status, 403, refused.body);
  assert.match(refused.body, /E_FORBIDDEN/);
  assert.match(refused.body, /Cannot predict the move of VM 'ha1': .*only an administrator may ask for/);
  const plain = await post(agent, at(vm.host), '/v1/compare', body);
  assert.equal(plain.status, 200, plain.body);
  assert.equal((JSON.parse(plain.body) as { prediction?: unknown }).prediction ?? null, null);
  agent.destroy();
  const after = await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab: L.lab });
  assert.deepEqual(
    after.filter((v) => v.name === 'ha1').map((v) => `${v.host}:${v.state}`),
    [`${vm.host}:running`],
  );
});
