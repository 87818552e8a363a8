// A hostile host with only its own host certificate, against a 3-host cluster lab (real agents,
// real etcd): it sends incoming moves whose files, folders and kernel lie outside the victim's
// pools (outright, through '..' and through a symbolic link in the shared pool it can write, also
// one that stays inside the pool: no link below a pool's root is followed when files are made),
// and checkpoint chains naming files their tree does not; asks the victim to move its VM to the
// hostile host or to cancel an administrator's move; points a qcow2 header in the shared pool at
// a host file. Every attempt is refused with a 4xx (or, for the image, a start that fails) and a
// clear message, and nothing changed: no file written, no folder made, no QEMU started, no move
// recorded, the VM where it was.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { ferry, ferryOk } from '../e2e/cli.js';
import { hostData, type TestLab } from '../e2e/lab.js';
import { hostQemuPids, type LabStatus } from '../../src/lab/lab.js';
import { configFile } from '../../src/vm/folder.js';
import type { ClusterView, VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { labTempDir } from '../helpers.js';
import { hostAgent, post, postBytes } from './host-client.js';
import { encodeIncoming, INCOMING_CONTENT_TYPE } from '../../src/api/incoming-body.js';

const execFileP = promisify(execFile);
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
  const agent = hostAgent(hostData(L, mallory));
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
    // The same with the file's bytes after the JSON (what Ferry's own source sends).
    const bytes = Buffer.from('not a kernel');
    const b = await postBytes(
      R.agent,
      R.endpoint(R.victim),
      '/v1/peer/incoming',
      encodeIncoming(
        incoming(evilSpec(folder), { disks: [], dirs: [folder], files: [{ path: p, size: bytes.length }] }),
        [bytes],
      ),
      INCOMING_CONTENT_TYPE,
    );
    assert.equal(b.status, 400, `${p}: ${b.body}`);
    assert.match(b.body, /is not a plain file name inside its folder/);
  }
  // Bytes that are not the files the JSON names, or sizes without bytes: refused before any step.
  const named = incoming(evilSpec(folder), {
    disks: [],
    dirs: [folder],
    files: [{ path: path.join(folder, 'vmlinuz'), size: 100 }],
  });
  const short = await postBytes(
    R.agent,
    R.endpoint(R.victim),
    '/v1/peer/incoming',
    encodeIncoming(named, [Buffer.alloc(10)]),
    INCOMING_CONTENT_TYPE,
  );
  assert.equal(short.status, 400, short.body);
  assert.match(short.body, /sizes add up to 100 bytes but 10 follow/);
  // Its JSON line is parsed as every JSON body is: a prototype key is refused.
  const poisoned = await postBytes(
    R.agent,
    R.endpoint(R.victim),
    '/v1/peer/incoming',
    Buffer.from(`${JSON.stringify(named).replace(/^\{/, '{"__proto__":{"admin":true},')}\n`),
    INCOMING_CONTENT_TYPE,
  );
  assert.equal(poisoned.status, 400, poisoned.body);
  assert.match(poisoned.body, /names a prototype key/);
  const noBytes = await post(R.agent, R.endpoint(R.victim), '/v1/peer/incoming', named);
  assert.equal(noBytes.status, 400, noBytes.body);
  assert.match(noBytes.body, /came without its 100 bytes/);
  assert.deepEqual(await fsp.readdir(outside), [], 'no host file written');
  assert.equal(fs.existsSync(folder), false, 'no folder made');
});

/** An incoming move of a VM whose folder (and its one file, a kernel) is `folder`. */
function intoFolder(folder: string): ReturnType<typeof post> {
  return post(
    R.agent,
    R.endpoint(R.victim),
    '/v1/peer/incoming',
    incoming(evilSpec(folder), {
      disks: [],
      dirs: [folder],
      files: [{ ...kernel, path: path.join(folder, 'vmlinuz') }],
    }),
  );
}

test('incoming move: a VM folder outside the pools, or reached by a symlink out of one, is refused', async () => {
  // The hostile host writes the shared pool too: a link from it to a host folder.
  const link = path.join(shared(), 'lnk');
  await fsp.symlink(outside, link);
  try {
    for (const folder of [path.join(outside, 'vm'), path.join(link, 'vm'), link]) {
      const r = await intoFolder(folder);
      assert.equal(r.status, 400, `${folder}: ${r.body}`);
      assert.match(r.body, /it is outside every storage pool of host/);
    }
    assert.deepEqual(await fsp.readdir(outside), [], 'nothing made through the link');
  } finally {
    await fsp.rm(link);
  }
});

test('incoming move: a folder that is a link, even inside the pool, is not followed when files are made', async () => {
  // Stands for a folder swapped for a link after the path checks: the check passes (the link
  // stays in the pool), and the folder is then made through a handle that follows no link.
  const real = path.join(shared(), 'real');
  const link = path.join(shared(), 'lnk2');
  await fsp.mkdir(real);
  await fsp.symlink(real, link);
  try {
    const folder = path.join(link, 'vm');
    const r = await intoFolder(folder);
    assert.equal(r.status, 400, r.body);
    assert.match(r.body, /E_PATH_LINK/);
    assert.match(r.body, /lnk2 is a symbolic link/);
    assert.deepEqual(await fsp.readdir(real), [], 'nothing made through the link');
  } finally {
    await fsp.rm(link);
    await fsp.rm(real, { recursive: true });
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

test('incoming move: a memory stream count out of bounds, or with post-copy or a stopped VM, is refused', async () => {
  // The one number a sender chooses for the QEMU the victim starts (QEMU's multifd-channels).
  const folder = path.join(shared(), 'evil');
  const withStreams = (n: unknown, extra: Record<string, unknown> = {}): unknown => ({
    ...(incoming(evilSpec(folder)) as Record<string, unknown>),
    multifdChannels: n,
    ...extra,
  });
  const attempts: Array<[string, unknown, RegExp]> = [
    ['9 streams', withStreams(9), /field 'multifdChannels'/],
    ['-1 streams', withStreams(-1), /field 'multifdChannels'/],
    ['2.5 streams', withStreams(2.5), /field 'multifdChannels'/],
    ['"4" streams', withStreams('4'), /field 'multifdChannels'/],
    ['streams with post-copy', withStreams(2, { postcopy: true }), /go only with a running VM moved without post-copy/],
    [
      'streams for a stopped VM',
      withStreams(2, { stopped: true }),
      /go only with a running VM moved without post-copy/,
    ],
  ];
  for (const [what, body, message] of attempts) {
    const r = await post(R.agent, R.endpoint(R.victim), '/v1/peer/incoming', body);
    assert.equal(r.status, 400, `${what}: ${r.body}`);
    assert.match(r.body, /E_INVALID_INPUT/, what);
    assert.match(r.body, message, what);
  }
  assert.equal(fs.existsSync(folder), false, 'no folder made');
  assert.deepEqual(await hostQemuPids(hostData(L, R.victim)), [], 'no QEMU started');
});

test('incoming move: checkpoint files the tree does not name, or outside the pools, are refused', async () => {
  const folder = path.join(shared(), 'evil');
  const ck = path.join(folder, 'checkpoints');
  const own = (spec.disks as Array<Record<string, unknown>>)[0]!;
  const id = String(own.id);
  const s = evilSpec(folder, { disks: [{ ...own, path: path.join(ck, `${id}-bbbb.qcow2`) }] });
  const base = path.join(folder, 'base.qcow2');
  const mem = path.join(ck, 'aaaa.mem');
  const tree = (b: string, o: { vmId?: unknown; memory?: string } = {}): unknown => ({
    version: 1,
    vmId: o.vmId ?? s.id,
    current: 'c1',
    base: { [id]: { path: b, format: 'qcow2' } },
    checkpoints: [
      {
        id: 'c1',
        name: 'c1',
        parent: null,
        created: new Date().toISOString(),
        disks: { [id]: null },
        memory: o.memory ?? 'aaaa.mem',
        running: true,
        pauseMs: 1,
        tookMs: 1,
      },
    ],
  });
  const send = (t: unknown, files: string[]): unknown =>
    incoming(s, {
      disks: [],
      dirs: [folder],
      files: [],
      chain: { tree: t, files: files.map((f) => ({ path: f, bytes: 1 })) },
    });
  const hostFile = path.join(outside, 'shadow');
  const attempts: Array<[string, unknown, RegExp]> = [
    ['a base image outside the pools', send(tree(hostFile), [hostFile, mem]), /outside every storage pool/],
    ['a file the tree does not name', send(tree(base), [base, mem, hostFile]), /is not a file of its tree/],
    ['a name climbing out', send(tree(base, { memory: '../../../x' }), [base]), /must be inside the folder/],
    ["another VM's tree", send(tree(base, { vmId: crypto.randomUUID() }), [base, mem]), /the tree belongs to VM/],
    ['an incomplete chain', send(tree(base), [base]), /the chain is incomplete/],
  ];
  for (const [what, body, message] of attempts) {
    const r = await post(R.agent, R.endpoint(R.victim), '/v1/peer/incoming', body);
    assert.equal(r.status, 400, `${what}: ${r.body}`);
    assert.match(r.body, message, what);
  }
  assert.deepEqual(await fsp.readdir(outside), [], 'no host file written');
  assert.equal(fs.existsSync(folder), false, 'no folder made');
  assert.deepEqual(await hostQemuPids(hostData(L, R.victim)), [], 'no QEMU started');
});

test('a VM whose shared vm.json names a host file, or whose initrd became a link, does not start', async () => {
  // Whoever writes the shared pool (the hostile host) edits the victim's VM there; the
  // administrator then starts it on the victim. QEMU gets its boot files from the agent, opened
  // inside the pools without links (src/vm/boot-files.ts), or does not start.
  const folder = path.join(shared(), 'v1');
  const file = configFile(folder);
  const saved = await fsp.readFile(file, 'utf8');
  const initrd = path.join(folder, 'initrd.img');
  const hostFile = path.join(outside, 'shadow');
  await fsp.writeFile(hostFile, 'root:secret:\n');
  const start = (): ReturnType<typeof ferry> => ferry(['vm', 'start', 'v1'], { lab: L.lab });
  try {
    const s = JSON.parse(saved) as { boot: Record<string, unknown>; cdroms: unknown[] };
    const tampered: Array<[string, unknown, RegExp]> = [
      ['initrd', { ...s, boot: { ...s.boot, initrd: hostFile } }, /the initrd of VM 'v1'.*outside every storage pool/],
      [
        'cdrom',
        { ...s, cdroms: [{ id: 'cd0', path: hostFile, role: 'media' }] },
        /CD-ROM cd0 of VM 'v1'.*outside every storage pool/,
      ],
    ];
    for (const [what, spec, message] of tampered) {
      await fsp.writeFile(file, JSON.stringify(spec));
      const r = await start();
      assert.notEqual(r.code, 0, `${what}: ${r.stdout}`);
      assert.match(r.stderr, message, what);
      assert.doesNotMatch(r.stderr, /\n\s+at /, `${what}: no stack trace`);
      assert.deepEqual(await hostQemuPids(hostData(L, R.victim)), [], `${what}: no QEMU started`);
    }
    await fsp.writeFile(file, saved);
    // The initrd replaced by a link: to the host file, or to a file inside the pool (what a
    // link swapped in after a path's check would pass): no link below a pool's root is followed.
    const real = `${initrd}.real`;
    await fsp.rename(initrd, real);
    try {
      for (const target of [hostFile, real]) {
        await fsp.symlink(target, initrd);
        const r = await start();
        await fsp.rm(initrd);
        assert.notEqual(r.code, 0, r.stdout);
        assert.match(r.stderr, /Cannot open the initrd of VM 'v1' .*initrd\.img is a symbolic link/, target);
        assert.deepEqual(await hostQemuPids(hostData(L, R.victim)), [], `${target}: no QEMU started`);
      }
    } finally {
      await fsp.rm(initrd, { force: true });
      await fsp.rename(real, initrd);
    }
  } finally {
    await fsp.writeFile(file, saved);
    await fsp.rm(hostFile, { force: true });
  }
  // Untouched again, it starts, with the boot files as descriptors the agent opened.
  await ferryOk(['vm', 'start', 'v1'], { lab: L.lab });
  const [pid] = await hostQemuPids(hostData(L, R.victim));
  assert.ok(pid, 'QEMU runs');
  const argv = (await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
  const named = argv[argv.indexOf('-initrd') + 1] ?? '';
  assert.match(named, /^\/proc\/self\/fd\/\d+$/);
  const fd = named.split('/').pop()!;
  assert.equal(await fsp.readlink(`/proc/${pid}/fd/${fd}`), initrd, "QEMU's descriptor is the VM's own initrd");
  // Swapped for a link while it runs: a move's destination refuses to start it, and the VM runs
  // on where it was, the same QEMU, nothing started on the destination.
  const third = L.status.hosts.map((h) => h.name).find((h) => h !== R.mallory && h !== R.victim)!;
  const real = `${initrd}.real`;
  await fsp.rename(initrd, real);
  await fsp.symlink(real, initrd);
  try {
    const move = await ferry(['move-vm', 'v1', '--to', third, '--json'], { lab: L.lab, timeoutMs: 180_000 });
    assert.notEqual(move.code, 0, move.stdout);
    assert.match(move.stdout + move.stderr, /initrd\.img is a symbolic link/);
  } finally {
    await fsp.rm(initrd);
    await fsp.rename(real, initrd);
  }
  const after = await ferryOk<VmView>(['vm', 'show', 'v1', '--json'], { lab: L.lab });
  assert.equal(`${after.host}:${after.state}`, `${R.victim}:running`);
  assert.deepEqual(await hostQemuPids(hostData(L, R.victim)), [pid], 'the same QEMU runs on');
  assert.deepEqual(await hostQemuPids(hostData(L, third)), [], 'no QEMU on the destination');
  await ferryOk(['vm', 'stop', 'v1', '--force'], { lab: L.lab });
});

test('a host that is not the leader cannot order a move or storage move, nor compare toward a non-member', async () => {
  // The moves an earlier test recorded (an administrator's, refused by the destination).
  const listMoves = (): Promise<MigrationRecord[]> =>
    ferryOk<MigrationRecord[]>(['migration', 'list', '--all', '--json'], { lab: L.lab });
  const before = new Set((await listMoves()).map((m) => m.id));
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
  // Nor a storage move on another host (administrators only), a resumable one neither: such a
  // move takes a file already at its new path only when the victim's own marker names it.
  const stolen = path.join(shared(), 'v1-stolen');
  const storage = await post(R.agent, R.endpoint(R.victim), '/v1/storage-moves', {
    vm: 'v1',
    path: stolen,
    resumable: 'always',
  });
  assert.equal(storage.status, 403, storage.body);
  assert.match(storage.body, new RegExp(`the host certificate of '${R.mallory}' may not call it`));
  assert.equal(fs.existsSync(stolen), false, 'no folder made');

  const moves = (await listMoves()).filter((m) => !before.has(m.id));
  assert.deepEqual(moves, [], 'no move recorded');
  const vms = await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab: L.lab });
  assert.deepEqual(
    vms.map((v) => `${v.name}@${v.host}:${v.state}`),
    [`v1@${R.victim}:stopped`],
  );
  for (const h of L.status.hosts) assert.deepEqual(await hostQemuPids(hostData(L, h.name)), [], `no QEMU on ${h.name}`);
});

test("a host cancels only moves into it: not an administrator's move on another host", async () => {
  const third = L.status.hosts.map((h) => h.name).find((h) => h !== R.mallory && h !== R.victim)!;
  const rec = await ferryOk<MigrationRecord>(['move-vm', 'v1', '--to', third, '--json'], { lab: L.lab });
  assert.equal(rec.state, 'completed');
  assert.deepEqual(rec.requestedBy, { name: 'admin', role: 'admin' });
  const cancel = await post(R.agent, R.endpoint(R.victim), `/v1/migrations/${rec.id}/cancel`, {});
  assert.equal(cancel.status, 403, cancel.body);
  assert.match(cancel.body, new RegExp(`host '${R.mallory}' does not receive it`));
  // Its destination may: the request passes, and is refused only because the move has ended.
  const dest = hostAgent(hostData(L, third));
  const own = await post(dest, R.endpoint(R.victim), `/v1/migrations/${rec.id}/cancel`, {});
  dest.destroy();
  assert.match(own.body, /E_MIGRATION_DONE/);
  const vms = await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab: L.lab });
  assert.deepEqual(
    vms.map((v) => `${v.name}@${v.host}:${v.state}`),
    [`v1@${third}:stopped`],
  );
  R.agent.destroy();
});

test('a qcow2 header naming a backing file outside the pools: the VM does not start, QEMU never opens it', async () => {
  // The hostile host can write the shared pool: it points v1's disk at a host file of the
  // victim (a file of the outside folder stands for /dev/sda or /etc/shadow).
  const vm = await ferryOk<VmView>(['vm', 'show', 'v1', '--json'], { lab: L.lab });
  const disk = JSON.parse(await fsp.readFile(configFile(path.join(shared(), 'v1')), 'utf8')) as {
    disks: Array<{ path: string }>;
  };
  const secret = path.join(outside, 'host-disk');
  await fsp.writeFile(secret, Buffer.alloc(1024 * 1024, 7));
  const image = disk.disks[0]!.path;
  await execFileP('qemu-img', ['rebase', '-u', '-b', secret, '-F', 'raw', image]);
  const r = await ferry(['vm', 'start', 'v1'], { lab: L.lab });
  assert.notEqual(r.code, 0, r.stdout);
  assert.match(r.stderr, new RegExp(`the backing file of ${image}`));
  assert.match(r.stderr, /outside every storage pool/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  assert.deepEqual(await hostQemuPids(hostData(L, vm.host)), [], 'no QEMU started');
  assert.equal((await ferryOk<VmView>(['vm', 'show', 'v1', '--json'], { lab: L.lab })).state, 'stopped');
});
