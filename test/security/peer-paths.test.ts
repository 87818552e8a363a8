// A hostile host with only its own host certificate, against a 3-host cluster lab (real agents,
// real etcd): it sends incoming moves whose files, folders and kernel lie outside the victim's
// pools (outright, through '..' and through a symbolic link in the shared pool it can write),
// and asks the victim to move its VM to the hostile host. Every attempt is refused with a 4xx
// and a clear message, and nothing changed: no file written, no folder made, no QEMU started,
// no move recorded, the VM where it was.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { ferry, ferryOk } from '../e2e/cli.js';
import { hostData, type TestLab } from '../e2e/lab.js';
import { hostQemuPids, type LabStatus } from '../../src/lab/lab.js';
import { configFile } from '../../src/vm/folder.js';
import type { ClusterView, VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { labTempDir } from '../helpers.js';

const L: TestLab = { dir: '', lab: '', status: { dir: '', hosts: [], etcd: [] } };
/** Outside every pool: where a write would be a host file (a temp folder stands for /etc). */
let outside = '';
before(async () => {
  L.dir = await labTempDir('ferry-sec-paths-');
  L.lab = path.join(L.dir, 'lab');
  outside = path.join(L.dir, 'host-files');
  await fsp.mkdir(outside);
  L.status = await ferryOk<LabStatus>(['lab', 'up', '--dir', L.lab, '--hosts', '3', '--cluster', '--json']);
});
after(async () => {
  await ferry(['lab', 'down', '--dir', L.lab]);
  await fsp.rm(L.dir, { recursive: true, force: true });
});

function post(
  agent: https.Agent,
  endpoint: string,
  url: string,
  body: unknown,
): Promise<{ status: number; body: string }> {
  const u = new URL(endpoint);
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: u.hostname,
        port: Number(u.port),
        method: 'POST',
        path: url,
        agent,
        timeout: 60_000,
        headers: { 'content-type': 'application/json' },
      },
      (res) => {
        let b = '';
        res.on('data', (c: Buffer) => (b += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`POST ${url} timed out`)));
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

interface Roles {
  mallory: string;
  victim: string;
  agent: https.Agent;
  endpoint: (h: string) => string;
}

async function roles(): Promise<Roles> {
  const view = await ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab: L.lab });
  assert.ok(view.leader, 'the cluster has a leader');
  const [mallory, victim] = L.status.hosts.map((h) => h.name).filter((h) => h !== view.leader) as [string, string];
  const tls = path.join(hostData(L, mallory), 'tls');
  const agent = new https.Agent({
    ca: fs.readFileSync(path.join(tls, 'ca.crt')),
    cert: fs.readFileSync(path.join(tls, 'host.crt')),
    key: fs.readFileSync(path.join(tls, 'host.key')),
  });
  const endpoint = (h: string): string => L.status.hosts.find((x) => x.name === h)!.endpoint;
  return { mallory, victim, agent, endpoint };
}

let R: Roles;
let spec: Record<string, unknown> = {};
const shared = (): string => path.join(L.lab, 'shared');

test('setup: a stopped VM on the victim, whose spec the hostile host copies', async () => {
  R = await roles();
  const folder = path.join(shared(), 'v1');
  await ferryOk(['vm', 'new', 'v1', '--host', R.victim, '--guest', 'probe', '--path', folder, '--json'], {
    lab: L.lab,
  });
  spec = JSON.parse(await fsp.readFile(configFile(folder), 'utf8')) as Record<string, unknown>;
});

/** A spec of a new VM (no disks, boots the kernel of its folder) in `folder`. */
function evilSpec(folder: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    ...spec,
    name: 'evil',
    id: crypto.randomUUID(),
    configPath: folder,
    checkpointPath: folder,
    pagingPath: folder,
    disks: [],
    ...extra,
  };
}

function incoming(s: Record<string, unknown>, storage?: unknown): unknown {
  const jobId = crypto.randomUUID();
  return { jobId, source: R.mallory, spec: s, tls: true, postcopy: false, ...(storage ? { storage } : {}) };
}

const kernel = { path: '', base64: Buffer.from('not a kernel').toString('base64') };

test('incoming move: a file path outside the VM folder is refused, nothing is written', async () => {
  const folder = path.join(shared(), 'evil');
  const target = path.join(outside, 'authorized_keys');
  const attempts = [
    target,
    `${folder}/../../../../../../../..${target}`,
    path.join(folder, 'sub', 'x'),
    `${folder}/vm.json`,
  ];
  for (const p of attempts) {
    const r = await post(
      R.agent,
      R.endpoint(R.victim),
      '/v1/peer/incoming',
      incoming(evilSpec(folder), { disks: [], dirs: [folder], files: [{ ...kernel, path: p }] }),
    );
    assert.equal(r.status, 400, `${p}: ${r.body}`);
    assert.match(r.body, /E_INVALID_INPUT/);
    assert.match(r.body, /is not a plain file name inside its folder/);
  }
  assert.deepEqual(await fsp.readdir(outside), [], 'no host file written');
  assert.equal(fs.existsSync(folder), false, 'no folder made');
});

test('incoming move: a VM folder outside the pools, or reached by a symlink out of one, is refused', async () => {
  // The hostile host writes the shared pool too: a link from it to a host folder.
  const link = path.join(shared(), 'lnk');
  await fsp.symlink(outside, link);
  try {
    for (const folder of [path.join(outside, 'vm'), path.join(link, 'vm'), link]) {
      const r = await post(
        R.agent,
        R.endpoint(R.victim),
        '/v1/peer/incoming',
        incoming(evilSpec(folder), {
          disks: [],
          dirs: [folder],
          files: [{ ...kernel, path: path.join(folder, 'vmlinuz') }],
        }),
      );
      assert.equal(r.status, 400, `${folder}: ${r.body}`);
      assert.match(r.body, /it is outside every storage pool of host/);
    }
    assert.deepEqual(await fsp.readdir(outside), [], 'nothing made through the link');
  } finally {
    await fsp.rm(link);
  }
});

test('incoming move: a kernel, CD-ROM or extra folder outside the pools is refused', async () => {
  const folder = path.join(shared(), 'evil');
  const hostFile = path.join(outside, 'shadow');
  const attempts: Array<[string, unknown, RegExp]> = [
    // Shared storage (no files sent): the guest would boot a host file as its initrd.
    [
      'initrd',
      incoming(evilSpec(folder, { boot: { kind: 'kernel', kernel: 'vmlinuz', initrd: hostFile, append: '' } })),
      /the initrd of arriving VM 'evil'.*outside every storage pool/,
    ],
    [
      'cdrom',
      incoming(evilSpec(folder, { cdroms: [{ id: 'cd0', path: hostFile, role: 'media' }] })),
      /CD-ROM cd0 of arriving VM 'evil'.*outside every storage pool/,
    ],
    [
      'extra folder',
      incoming(evilSpec(folder), { disks: [], dirs: [folder, path.join(outside, 'made')], files: [] }),
      /is none of its folders/,
    ],
  ];
  for (const [what, body, message] of attempts) {
    const r = await post(R.agent, R.endpoint(R.victim), '/v1/peer/incoming', body);
    assert.equal(r.status, 400, `${what}: ${r.body}`);
    assert.match(r.body, message, what);
  }
  // Too many files: refused by the request's bounds before anything runs.
  const files = Array.from({ length: 17 }, (_, i) => ({ ...kernel, path: path.join(folder, `f${i}`) }));
  const r = await post(
    R.agent,
    R.endpoint(R.victim),
    '/v1/peer/incoming',
    incoming(evilSpec(folder), { disks: [], dirs: [folder], files }),
  );
  assert.equal(r.status, 400, r.body);
  assert.match(r.body, /field 'storage\.files'/);
  assert.deepEqual(await fsp.readdir(outside), []);
  assert.equal(fs.existsSync(folder), false);
  assert.deepEqual(await hostQemuPids(hostData(L, R.victim)), [], 'no QEMU started');
});

test('a host that is not the leader cannot order a move, nor compare toward a non-member', async () => {
  const order = await post(R.agent, R.endpoint(R.victim), '/v1/migrations', {
    vm: 'v1',
    to: { name: R.mallory, endpoint: R.endpoint(R.mallory) },
  });
  assert.equal(order.status, 403, order.body);
  assert.match(order.body, /E_FORBIDDEN/);
  assert.match(order.body, new RegExp(`host '${R.mallory}' is not the cluster's leader`));
  const compare = await post(R.agent, R.endpoint(R.victim), '/v1/compare', {
    vm: 'v1',
    to: { name: 'outsider', endpoint: 'https://127.0.0.1:9' },
  });
  assert.equal(compare.status, 403, compare.body);
  assert.match(compare.body, /destination 'outsider' is not a member of cluster/);

  const moves = await ferryOk<MigrationRecord[]>(['migration', 'list', '--all', '--json'], { lab: L.lab });
  assert.deepEqual(moves, [], 'no move recorded');
  const vms = await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab: L.lab });
  assert.deepEqual(
    vms.map((v) => `${v.name}@${v.host}:${v.state}`),
    [`v1@${R.victim}:stopped`],
  );
  for (const h of L.status.hosts) assert.deepEqual(await hostQemuPids(hostData(L, h.name)), [], `no QEMU on ${h.name}`);
  R.agent.destroy();
});
