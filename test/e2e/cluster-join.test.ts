// Real hosts form a cluster by command: `ferry cluster create` on the first host and `ferry
// cluster join` on the next, against etcd the administrator runs with the domain's
// certificates (here: a one-member etcd started from the lab's domain, on loopback).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { startMembers, stopLabMembers } from '../../src/cluster/etcd-members.js';
import { sleep } from '../../src/util/exec.js';
import type { ClusterView } from '../../src/api/schemas.js';

let dir = '';
after(async () => {
  if (!dir) return;
  await ferry(['lab', 'down', '--dir', path.join(dir, 'lab')]);
  await stopLabMembers(path.join(dir, 'etcd'), { graceMs: 5000 }).catch(() => undefined);
  await fsp.rm(dir, { recursive: true, force: true });
});

test('cluster create on one host, join on another, with clear refusals', async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fjn-'));
  const lab = path.join(dir, 'lab');
  await ferryOk(['lab', 'up', '--dir', lab, '--hosts', '2']);
  const [m] = await startMembers({ labDir: path.join(dir, 'etcd'), hosts: ['etcd1'], domainDir: path.join(lab, 'domain'), timeoutMs: 60_000 });
  const url = m!.clientUrl;

  const notYet = await ferry(['cluster', 'status'], { lab });
  assert.equal(notYet.code, 4, notYet.stderr);
  assert.match(notYet.stderr, /not in a cluster/);
  const noSuch = await ferry(['cluster', 'join', 'prod', '--host', 'host-b', '--etcd', url], { lab });
  assert.notEqual(noSuch.code, 0);
  assert.match(noSuch.stderr, /Cannot join cluster 'prod': it has no members .* create it first/);
  const badUrl = await ferry(['cluster', 'create', 'prod', '--host', 'host-a', '--etcd', 'http://127.0.0.1:1'], { lab });
  assert.equal(badUrl.code, 2, badUrl.stderr);
  assert.match(badUrl.stderr, /https/);

  const created = await ferryOk<ClusterView>(['cluster', 'create', 'prod', '--host', 'host-a', '--etcd', url, '--json'], { lab });
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
  assert.deepEqual(v!.nodes.map((n) => `${n.name}:${n.state}`), ['host-a:up', 'host-b:up']);
  assert.ok(v!.leader);
  const other = await ferry(['cluster', 'join', 'other', '--host', 'host-b', '--etcd', url], { lab });
  assert.notEqual(other.code, 0);
  assert.match(other.stderr, /is in cluster 'prod'; a host belongs to one cluster/);
  // The membership is on disk: the agent's agent.json names the cluster.
  const cfg = JSON.parse(await fsp.readFile(path.join(lab, 'hosts', 'host-b', 'data', 'agent.json'), 'utf8')) as { cluster?: { name: string } };
  assert.equal(cfg.cluster?.name, 'prod');
});
