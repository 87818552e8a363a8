// Real hosts form a cluster by command: `ferry cluster create` on the first host and `ferry
// cluster join` on the next, against etcd the administrator runs with the domain's
// certificates (here: a one-member etcd started from the lab's domain, on loopback).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { startMembers, stopLabMembers } from '../../src/cluster/etcd-members.js';
import { sleep } from '../../src/util/exec.js';
import type { ClusterView } from '../../src/api/schemas.js';
import { labTempDir } from '../helpers.js';

let dir = '';
after(async () => {
  if (!dir) return;
  await ferry(['lab', 'down', '--dir', path.join(dir, 'lab')]);
  await stopLabMembers(path.join(dir, 'etcd'), { graceMs: 5000 }).catch(() => undefined);
  await fsp.rm(dir, { recursive: true, force: true });
});

test('cluster create on one host, join on another, with clear refusals', async () => {
  dir = await labTempDir('fjn-');
  const lab = path.join(dir, 'lab');
  await ferryOk(['lab', 'up', '--dir', lab, '--hosts', '2']);
  const [m] = await startMembers({
    labDir: path.join(dir, 'etcd'),
    hosts: ['etcd1'],
    domainDir: path.join(lab, 'domain'),
    timeoutMs: 60_000,
  });
  const url = m!.clientUrl;

  const notYet = await ferry(['cluster', 'status'], { lab });
  assert.equal(notYet.code, 4, notYet.stderr);
  assert.match(notYet.stderr, /not in a cluster/);
  const noSuch = await ferry(['cluster', 'join', 'prod', '--host', 'host-b', '--etcd', url], { lab });
  assert.notEqual(noSuch.code, 0);
  assert.match(noSuch.stderr, /Cannot join cluster 'prod': it has no members .* create it first/);
  const badUrl = await ferry(['cluster', 'create', 'prod', '--host', 'host-a', '--etcd', 'http://127.0.0.1:1'], {
    lab,
  });
  assert.equal(badUrl.code, 2, badUrl.stderr);
  assert.match(badUrl.stderr, /https/);

  const created = await ferryOk<ClusterView>(
    ['cluster', 'create', 'prod', '--host', 'host-a', '--etcd', url, '--json'],
    { lab },
  );
  assert.equal(created.name, 'prod');
  const again = await ferry(['cluster', 'create', 'prod', '--host', 'host-b', '--etcd', url], { lab });
  assert.notEqual(again.code, 0);
  assert.match(again.stderr, /it exists .* join it/);
  await ferryOk(['cluster', 'join', 'prod', '--host', 'host-b', '--etcd', url, '--json'], { lab });
  let v: ClusterView | null = null;
  for (let i = 0; i < 60; i++) {
    v = await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab });
    if (v.nodes.length === 2 && v.nodes.every((n) => n.state === 'up') && v.leader) break;
    await sleep(250);
  }
  assert.deepEqual(
    v!.nodes.map((n) => `${n.name}:${n.state}`),
    ['host-a:up', 'host-b:up'],
  );
  assert.ok(v!.leader);
  const other = await ferry(['cluster', 'join', 'other', '--host', 'host-b', '--etcd', url], { lab });
  assert.notEqual(other.code, 0);
  assert.match(other.stderr, /is in cluster 'prod'; a host belongs to one cluster/);
  // add-vm: refused for a VM on local storage (no other node could run it); a VM on the
  // shared pool joins with its policy, remove-vm takes it out (it keeps running).
  await ferryOk(['vm', 'new', 'loc', '--host', 'host-a', '--guest', 'bootblock'], { lab });
  const refused = await ferry(['cluster', 'add-vm', 'loc'], { lab });
  assert.notEqual(refused.code, 0);
  assert.match(
    refused.stderr,
    /Cannot add VM 'loc' to cluster 'prod': .* local pool 'local'.*move it to a shared pool first/,
  );
  await ferryOk(
    [
      'vm',
      'new',
      'sh',
      '--host',
      'host-a',
      '--guest',
      'bootblock',
      '--path',
      path.join(lab, 'shared', 'sh'),
      '--start',
    ],
    { lab },
  );
  await ferryOk(
    ['cluster', 'add-vm', 'sh', '--priority', 'high', '--preferred-owner', 'host-b,host-a', '--anti-affinity', 'web'],
    { lab },
  );
  let rec = (await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab })).vms.find((x) => x.name === 'sh');
  assert.deepEqual(
    rec && { owner: rec.owner, priority: rec.priority, pref: rec.preferredOwners, anti: rec.antiAffinity },
    { owner: 'host-a', priority: 'high', pref: ['host-b', 'host-a'], anti: ['web'] },
  );
  assert.equal((await ferryOk<{ ha: boolean }>(['vm', 'show', 'sh', '--json'], { lab })).ha, true);
  const badPrio = await ferry(['vm', 'new', 'x', '--host', 'host-a', '--guest', 'bootblock', '--priority', 'high'], {
    lab,
  });
  assert.equal(badPrio.code, 2);
  assert.match(badPrio.stderr, /without --ha/);
  await ferryOk(['cluster', 'remove-vm', 'sh'], { lab });
  rec = (await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab })).vms.find((x) => x.name === 'sh');
  assert.equal(rec, undefined);
  const after = await ferryOk<{ ha: boolean; state: string; host: string }>(['vm', 'show', 'sh', '--json'], { lab });
  assert.deepEqual([after.ha, after.state, after.host], [false, 'running', 'host-a']);
  // The membership is on disk: the agent's agent.json names the cluster.
  const cfg = JSON.parse(await fsp.readFile(path.join(lab, 'hosts', 'host-b', 'data', 'agent.json'), 'utf8')) as {
    cluster?: { name: string };
  };
  assert.equal(cfg.cluster?.name, 'prod');
});
