// The fleet lab built from the package (issue 13, item 5): `ferry lab up --package DEB --hosts 3
// --cluster` makes three "machines" on this one, each running the unpacked .deb in network,
// mount and UTS namespaces of its own, enrolled with the package's commands, one etcd member
// in each. Then a live move with shared storage, a shared-nothing move and a drain, with the
// probe guest's checked records, and proof that each host's private key exists in that
// host's own root only.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { REPO_ROOT } from '../../guest/paths.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { hostRoot } from '../../src/lab/package-host.js';
import { sleep } from '../../src/util/exec.js';
import type { LabStatus } from '../../src/lab/lab.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { labTempDir } from '../helpers.js';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root: namespaces, mounts and bridges';

let dir = '';
let lab = '';
let status: LabStatus = { dir: '', hosts: [], etcd: [] };

const dataOf = (host: string): string => {
  const h = status.hosts.find((x) => x.name === host);
  assert.ok(h, `the lab has ${host}`);
  return h.dataDir;
};
const serialLog = (host: string, vmId: string): string => path.join(dataOf(host), 'run', vmId, 'serial.log');
const show = (vm: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', vm, '--json'], { lab });

async function waitAcks(vm: VmView, n: number, timeoutMs = 90_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const s = parseSerial(await fsp.readFile(serialLog(vm.host, vm.id), 'utf8').catch(() => ''));
    if (s.heartbeats.length >= n && s.acks.length >= Math.min(n, 10)) return;
    await sleep(250);
  }
  assert.fail(`probe ${vm.name} on ${vm.host} printed fewer than ${n} heartbeats and acks`);
}

/** The highest record the guest acknowledged, across every host's serial log of the VM. */
function highestAck(vmId: string): number {
  let ack = 0;
  for (const h of status.hosts) {
    const f = serialLog(h.name, vmId);
    if (fs.existsSync(f)) ack = Math.max(ack, parseSerial(fs.readFileSync(f, 'utf8')).highestAck ?? 0);
  }
  return ack;
}

function build(out: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      path.join(REPO_ROOT, 'scripts', 'package'),
      ['--out', out],
      { encoding: 'utf8', timeout: 300_000, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => (err ? reject(new Error(`scripts/package failed: ${stderr}`)) : resolve(stdout.trim())),
    );
  });
}

/** Every regular file under `d` (not following links). */
async function* files(d: string): AsyncGenerator<string> {
  for (const e of await fsp.readdir(d, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(d, e.name);
    if (e.isDirectory()) yield* files(p);
    else if (e.isFile()) yield p;
  }
}

before(async () => {
  if (skip) return;
  dir = await labTempDir('ferry-fleet-');
  lab = path.join(dir, 'lab');
  const deb = await build(path.join(dir, 'dist'));
  status = await ferryOk<LabStatus>(
    ['lab', 'up', '--dir', lab, '--package', deb, '--hosts', '3', '--cluster', '--json'],
    { timeoutMs: 300_000 },
  );
});

after(async () => {
  if (!dir) return;
  await ferry(['lab', 'down', '--dir', lab]);
  await fsp.rm(dir, { recursive: true, force: true });
});

test('each host runs the package in its own namespaces; its key exists only in its own root', { skip }, async () => {
  assert.equal(status.hosts.length, 3);
  for (const h of status.hosts) {
    assert.ok(h.up && h.agentPid, `${h.name} is up`);
    const pid = h.agentPid;
    // The unit's ExecStart on the package's own runtime, seen from inside the host.
    assert.equal(fs.readlinkSync(`/proc/${pid}/exe`), '/usr/lib/ferry/node');
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    assert.deepEqual(argv.slice(1), ['/usr/lib/ferry/cli.mjs', 'agent', '--config', '/etc/ferry/agent.json']);
    const uts = execFileSync('nsenter', ['--target', String(pid), '--uts', 'hostname'], { encoding: 'utf8' });
    assert.equal(uts.trim(), h.name);
    const cfg = JSON.parse(fs.readFileSync(`/proc/${pid}/root/etc/ferry/agent.json`, 'utf8')) as { name: string };
    assert.equal(cfg.name, h.name, "the host's /etc/ferry is its own");
    assert.notEqual(
      fs.statSync(`/proc/${pid}/ns/mnt`).ino,
      fs.statSync('/proc/self/ns/mnt').ino,
      'the agent has a mount namespace of its own',
    );
  }
  // Figures for the record: the package, unpacked, and an idle packaged agent's memory.
  const rss = status.hosts.map((h) => {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${h.agentPid}/status`, 'utf8'));
    return Math.round(Number(m?.[1] ?? 0) / 1024);
  });
  const du = (p: string): number => Number(execFileSync('du', ['-sk', p], { encoding: 'utf8' }).split('\t')[0]);
  console.log(
    `figures: unpacked package ${Math.round(du(path.join(lab, 'package')) / 1024)} MiB; ` +
      `agent RSS after start-up ${rss.join(', ')} MiB`,
  );
  // Nothing was installed on this machine.
  for (const p of ['/etc/ferry', '/var/lib/ferry', '/usr/lib/ferry']) assert.ok(!fs.existsSync(p), `${p} is absent`);
  // Each host's key: made inside its root (/etc/ferry/tls/host.key there); no copy of it anywhere
  // in the lab folder (the domain, the other hosts, the requests and certificates).
  const keys = new Map<string, string>();
  for (const h of status.hosts) {
    const key = path.join(hostRoot(lab, h.name), 'etc', 'ferry', 'tls', 'host.key');
    keys.set(h.name, await fsp.readFile(key, 'utf8'));
    assert.equal((await fsp.stat(key)).mode & 0o077, 0, `${h.name}'s key is private`);
  }
  const found = new Map<string, string[]>();
  for await (const f of files(lab)) {
    const st = await fsp.stat(f);
    if (st.size > 4096) continue;
    const text = await fsp.readFile(f, 'utf8').catch(() => '');
    for (const [name, key] of keys) if (text.includes(key.trim())) found.set(name, [...(found.get(name) ?? []), f]);
  }
  for (const h of status.hosts)
    assert.deepEqual(found.get(h.name), [path.join(hostRoot(lab, h.name), 'etc', 'ferry', 'tls', 'host.key')]);
});

test(
  'a live move with shared storage, a shared-nothing move and a drain between packaged hosts; ' +
    'heartbeats continue and every acknowledged record is on the disk',
  { skip },
  async () => {
    const w1 = await ferryOk<VmView>(
      [
        'vm',
        'new',
        'w1',
        '--host',
        'host-a',
        '--guest',
        'probe',
        '--ha',
        '--path',
        path.join(lab, 'shared', 'w1'),
        '--start',
        '--json',
      ],
      { lab },
    );
    await waitAcks(w1, 15);
    const live = await ferryOk<MigrationRecord>(['move-vm', 'w1', '--to', 'host-b', '--json'], {
      lab,
      timeoutMs: 300_000,
    });
    assert.equal(live.state, 'completed', JSON.stringify(live.error));
    assert.equal(live.kind, 'live');
    await waitAcks(await show('w1'), 25);

    // Shared nothing: a VM on host-a's local pool (its /var/lib/ferry) to host-c's.
    const w2 = await ferryOk<VmView>(['vm', 'new', 'w2', '--host', 'host-a', '--guest', 'probe', '--start', '--json'], {
      lab,
    });
    await waitAcks(w2, 10);
    const sn = await ferryOk<MigrationRecord>(['move-vm', 'w2', '--to', 'host-c', '--include-storage', '--json'], {
      lab,
      timeoutMs: 300_000,
    });
    assert.equal(sn.state, 'completed', JSON.stringify(sn.error));
    const moved = await show('w2');
    assert.equal(moved.host, 'host-c');
    await waitAcks(moved, 20);
    // The packaged agent set TCP_NODELAY on its QEMU's NBD server through the packaged koffi
    // (QEMU runs as ferry-qemu, not the agent's child); a failure only warns, and halves the copy's speed.
    const destLog = await fsp.readFile(path.join(status.dir, 'hosts', 'host-c', 'agent.log'), 'utf8');
    assert.doesNotMatch(destLog, /FERRY_NBD_NODELAY/, 'TCP_NODELAY was set on the NBD server');

    // Drain host-b: w1 goes to another node through the cluster's queue.
    const drained = await ferry(['cluster', 'drain', 'host-b'], { lab, timeoutMs: 300_000 });
    assert.equal(drained.code, 0, drained.stderr + drained.stdout);
    const after1 = await show('w1');
    assert.notEqual(after1.host, 'host-b');
    await waitAcks(after1, 35);

    // The guests' own proof: stop them, then every record they acknowledged is on their disks.
    for (const vm of [after1, moved]) {
      await ferryOk(['vm', 'stop', vm.name], { lab });
      const ack = highestAck(vm.id);
      assert.ok(ack > 0, `${vm.name} acknowledged records`);
      // A disk in a host's local pool is named as the host sees it (/var/lib/ferry/...).
      const disk = vm.disks[0]!.path.replace(/^\/var\/lib\/ferry\//, dataOf(vm.host) + '/');
      const report = await verifyDiskImage(disk, { format: 'qcow2', highestAck: ack });
      assert.equal(report.ok, true, `${vm.name}: ${report.problems.join('; ')}`);
    }
  },
);
