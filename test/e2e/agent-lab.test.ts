// The agent, the lab and the vm/host/switch/pool commands, through bin/ferry against a
// real 2-host lab with real QEMU.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import { execFileSync, spawn } from 'node:child_process';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { initDomain, issueCert, loadDomain } from '../../src/domain/ca.js';
import { parseSerial, heartbeatGaps, verifyDiskImage } from '../../guest/records.js';
import { sleep } from '../../src/util/exec.js';
import type { VmView, HostView } from '../../src/api/schemas.js';
import type { LabStatus } from '../../src/lab/lab.js';
import { labTempDir } from '../helpers.js';
import { REPO_ROOT } from '../../guest/paths.js';

let dir = '';
let lab = '';
let status: LabStatus;

before(async () => {
  dir = await labTempDir('ferry-e2e-');
  lab = path.join(dir, 'lab');
  status = await ferryOk<LabStatus>(['lab', 'up', '--dir', lab, '--hosts', '2', '--json']);
});

after(async () => {
  await ferry(['lab', 'down', '--dir', lab]);
  await fsp.rm(dir, { recursive: true, force: true });
});

const pidAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
  } catch {
    return false;
  }
};

test('lab status and host show give the contract JSON', async () => {
  assert.equal(status.hosts.length, 2);
  assert.deepEqual(
    status.hosts.map((h) => h.name),
    ['host-a', 'host-b'],
  );
  for (const h of status.hosts) {
    assert.match(h.endpoint, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(h.up, true);
    assert.ok(h.agentPid && pidAlive(h.agentPid));
  }
  const again = await ferryOk<LabStatus>(['lab', 'up', '--dir', lab, '--json']);
  assert.deepEqual(
    again.hosts.map((h) => h.agentPid),
    status.hosts.map((h) => h.agentPid),
    'up on a running lab starts nothing',
  );
  const host = await ferryOk<HostView>(['host', 'show', 'host-a', '--json'], { lab });
  assert.equal(host.name, 'host-a');
  assert.ok(['kvm', 'tcg'].includes(host.accelerator.name));
  assert.ok(host.qemu.machineTypes.includes('pc-i440fx-7.2'));
  assert.ok(host.memory.totalBytes > 0 && host.cpu.flags.length > 0);
  assert.deepEqual(
    host.pools.map((p) => [p.name, p.kind, p.usable]),
    [
      ['local', 'local', true],
      ['shared', 'shared', true],
    ],
  );
  assert.equal(host.pools[1]!.path, path.join(lab, 'shared'));
  assert.deepEqual(host.migration.maxLive, 2);
  const set = await ferryOk<HostView>(
    ['host', 'set', 'host-a', '--max-live', '3', '--migration-network', '127.0.0.0/8', '--tls', 'off', '--json'],
    { lab },
  );
  assert.equal(set.migration.maxLive, 3);
  assert.deepEqual(set.migration.networks, ['127.0.0.0/8']);
  assert.equal(set.migration.tls, false);
  const bad = await ferry(['host', 'set', 'host-a', '--migration-network', '10.0.0.0/99'], { lab });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /CIDR/);
  assert.doesNotMatch(bad.stderr, /\n\s+at /, 'no stack trace');
  const streams = await ferryOk<HostView>(['host', 'set', 'host-a', '--memory-streams', '4', '--json'], { lab });
  assert.equal(streams.migration.memoryStreams, 4);
  const noStreams = await ferry(['host', 'set', 'host-a', '--memory-streams', '0'], { lab });
  assert.equal(noStreams.code, 2);
  assert.match(noStreams.stderr, /--memory-streams '0': give a whole number from 1 to 8/);
  assert.equal((await ferryOk<HostView>(['host', 'show', 'host-a', '--json'], { lab })).migration.memoryStreams, 4);
});

test('a reader that leaves early (`ferry host show … | head -1`) ends the command quietly', async () => {
  // The pipe's reading end is closed before the command writes: its write fails with EPIPE.
  const child = spawn(path.join(REPO_ROOT, 'bin', 'ferry'), ['host', 'show', 'host-a'], {
    env: { ...process.env, FERRY_LAB: lab },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.destroy();
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  assert.equal(stderr, '', 'nothing on stderr (no EPIPE stack trace)');
  assert.equal(code, 0);
});

test('switches and pools', async () => {
  const sw = await ferryOk<{ name: string }>(['switch', 'new', 'prod', '--host', 'host-b', '--user', '--json'], {
    lab,
  });
  assert.equal(sw.name, 'prod');
  const list = await ferryOk<Array<{ host: string; name: string }>>(['switch', 'list', '--json'], { lab });
  assert.deepEqual(list.map((s) => `${s.host}/${s.name}`).sort(), ['host-a/lab', 'host-b/lab', 'host-b/prod']);
  const dup = await ferry(['switch', 'new', 'prod', '--host', 'host-b'], { lab });
  assert.equal(dup.code, 1);
  assert.match(dup.stderr, /already exists/);
  await ferryOk(['switch', 'rm', 'prod', '--host', 'host-b'], { lab });
  const gone = await ferry(['switch', 'rm', 'prod', '--host', 'host-b'], { lab });
  assert.equal(gone.code, 4);

  // A bridge switch: each NIC gets a tap on the bridge while its VM runs.
  const br = 'fytestbr0';
  execFileSync('ip', ['link', 'add', br, 'type', 'bridge']);
  try {
    const noBr = await ferry(['switch', 'new', 'lan2', '--host', 'host-a', '--bridge', 'nosuchbr9'], { lab });
    assert.equal(noBr.code, 4);
    assert.match(noBr.stderr, /no Linux bridge 'nosuchbr9'/);
    await ferryOk(['switch', 'new', 'lan', '--host', 'host-a', '--bridge', br], { lab });
    const v = await ferryOk<VmView>(
      [
        'vm',
        'new',
        'nic1',
        '--host',
        'host-a',
        '--guest',
        'bootblock',
        '--switch',
        'lan',
        '--switch',
        'lab',
        '--start',
        '--json',
      ],
      { lab },
    );
    assert.deepEqual(v.switches, ['lan', 'lab']);
    const ports = (): string[] =>
      (
        JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'master', br]).toString()) as Array<{ ifname: string }>
      ).map((l) => l.ifname);
    assert.equal(ports().length, 1, 'one tap on the bridge');
    assert.match(ports()[0]!, /^fy[0-9a-f]{10}n0$/);
    const inUse = await ferry(['switch', 'rm', 'lan', '--host', 'host-a'], { lab });
    assert.equal(inUse.code, 1);
    assert.match(inUse.stderr, /VM 'nic1' is connected/);
    await ferryOk(['vm', 'stop', 'nic1', '--force'], { lab });
    for (let i = 0; i < 50 && ports().length; i++) await sleep(100);
    assert.deepEqual(ports(), [], 'the tap is removed when the VM stops');
    await ferryOk(['vm', 'rm', 'nic1'], { lab });
    await ferryOk(['switch', 'rm', 'lan', '--host', 'host-a'], { lab });
  } finally {
    execFileSync('ip', ['link', 'del', br]);
  }

  const revoked = await ferryOk<{ granted: string[] }>(['pool', 'revoke', 'shared', '--host', 'host-b', '--json'], {
    lab,
  });
  assert.deepEqual(revoked.granted, ['host-a']);
  const pools = await ferryOk<Array<{ host: string; name: string; usable: boolean }>>(['pool', 'list', '--json'], {
    lab,
  });
  assert.equal(pools.find((p) => p.host === 'host-b' && p.name === 'shared')!.usable, false);
  const refused = await ferry(
    ['vm', 'new', 'nogrant', '--host', 'host-b', '--path', path.join(lab, 'shared', 'nogrant'), '--guest', 'bootblock'],
    { lab },
  );
  assert.equal(refused.code, 1);
  assert.match(
    refused.stderr,
    /not granted access to shared pool 'shared'; run 'ferry pool grant shared --host host-b'/,
  );
  await ferryOk(['pool', 'grant', 'shared', '--host', 'host-b'], { lab });
  assert.equal(fs.existsSync(path.join(lab, 'shared', 'nogrant')), false);
});

test(
  'a probe VM: new --start, show/list JSON, console, pause/resume, agent restart keeps it running, ' +
    'stop, start, rm',
  async () => {
    const shared = path.join(lab, 'shared', 'p1');
    const v = await ferryOk<VmView>(
      [
        'vm',
        'new',
        'p1',
        '--host',
        'host-a',
        '--guest',
        'probe',
        '--path',
        shared,
        '--memory',
        '256M',
        '--start',
        '--json',
      ],
      { lab },
    );
    for (const k of [
      'name',
      'id',
      'host',
      'state',
      'memoryMiB',
      'cpus',
      'configPath',
      'checkpointPath',
      'pagingPath',
      'disks',
      'switches',
      'ha',
    ])
      assert.ok(k in v, `vm show has ${k}`);
    assert.equal(v.state, 'running');
    assert.equal(v.host, 'host-a');
    assert.equal(v.memoryMiB, 256);
    assert.equal(v.configPath, shared);
    assert.deepEqual(
      v.disks.map((d) => [d.format, d.virtualSizeBytes]),
      [['qcow2', 64 * 1024 * 1024]],
    );

    const list = await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab });
    assert.deepEqual(
      list.map((x) => x.name),
      ['p1'],
    );

    let text = '';
    for (let i = 0; i < 100 && parseSerial(text).heartbeats.length < 20; i++) {
      await sleep(300);
      text = (await ferry(['vm', 'console', 'p1', '--tail', '50000000'], { lab })).stdout;
    }
    assert.ok(parseSerial(text).heartbeats.length >= 20, 'heartbeat visible on the console');

    assert.equal((await ferryOk<VmView>(['vm', 'pause', 'p1', '--json'], { lab })).state, 'paused');
    assert.equal((await ferryOk<VmView>(['vm', 'resume', 'p1', '--json'], { lab })).state, 'running');

    // Kill the agent (SIGKILL) and start it again: the VM never stops, the agent re-attaches.
    const agentPid = status.hosts[0]!.agentPid!;
    process.kill(agentPid, 'SIGKILL');
    const down = await ferry(['vm', 'show', 'p1', '--json'], { lab });
    assert.equal(down.code, 4, 'the VM is not found while its host does not answer');
    await sleep(1000);
    const restarted = await ferryOk<LabStatus>(['lab', 'up', '--dir', lab, '--json']);
    assert.notEqual(restarted.hosts[0]!.agentPid, agentPid);
    assert.equal(restarted.hosts[1]!.agentPid, status.hosts[1]!.agentPid, 'the other agent was left alone');
    const after = await ferryOk<VmView>(['vm', 'show', 'p1', '--json'], { lab });
    assert.equal(after.state, 'running');
    assert.equal(after.pid, v.pid, 'same QEMU process');
    await sleep(1500);
    const hbs = parseSerial((await ferry(['vm', 'console', 'p1', '--tail', '50000000'], { lab })).stdout).heartbeats;
    const gaps = heartbeatGaps(hbs);
    assert.equal(gaps.resets, 0, 'the heartbeat sequence never reset');
    assert.ok(hbs.length > parseSerial(text).heartbeats.length + 40, 'the guest kept running');

    const stopped = await ferryOk<VmView>(['vm', 'stop', 'p1', '--json'], { lab });
    assert.equal(stopped.state, 'stopped');
    const serial = parseSerial(
      await fsp.readFile(path.join(lab, 'hosts', 'host-a', 'data', 'run', v.id, 'serial.log'), 'utf8'),
    );
    const report = await verifyDiskImage(v.disks[0]!.path, { format: 'qcow2', highestAck: serial.highestAck! });
    assert.equal(report.ok, true, report.problems.join('; '));

    assert.equal((await ferryOk<VmView>(['vm', 'start', 'p1', '--json'], { lab })).state, 'running');
    const rmRunning = await ferry(['vm', 'rm', 'p1'], { lab });
    assert.equal(rmRunning.code, 1);
    assert.match(rmRunning.stderr, /stop it first/);
    await ferryOk(['vm', 'stop', 'p1', '--force'], { lab });
    await ferryOk(['vm', 'rm', 'p1'], { lab });
    assert.equal(fs.existsSync(shared), false, 'folder and disk removed');
    assert.deepEqual(await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab }), []);
    status = restarted;
  },
);

test('bad input: clear messages, the right exit codes, nothing created', async () => {
  const cases: Array<[string[], number, RegExp]> = [
    [['vm', 'show', 'nope'], 4, /Cannot find VM 'nope'/],
    [['vm', 'new', 'x1', '--host', 'host-a', '--memory', '12X', '--guest', 'bootblock'], 2, /--memory '12X'.*256M/],
    [['vm', 'new', 'x1', '--host', 'host-z', '--guest', 'bootblock'], 4, /host 'host-z'.*host-a, host-b/],
    [
      ['vm', 'new', 'x1', '--host', 'host-a', '--guest', 'bootblock', '--path', '/etc/x1'],
      2,
      /outside every storage pool.*local.*shared/,
    ],
    [
      [
        'vm',
        'new',
        'x1',
        '--host',
        'host-a',
        '--guest',
        'bootblock',
        '--path',
        path.join(lab, 'shared', '..', '..', 'escape'),
      ],
      2,
      /outside every storage pool/,
    ],
    [['vm', 'new', 'x1', '--host', 'host-a', '--disk', '10Q'], 2, /--disk '10Q'/],
    [['vm', 'new', 'x1', '--host', 'host-a', '--guest', 'bootblock', '--switch', 'nosuch'], 4, /switch 'nosuch'/],
    [['vm', 'new', 'x1', '--host', 'host-a', '--attach', '/nonexistent.qcow2'], 2, /outside every storage pool/],
    [['vm', 'new', '../x', '--host', 'host-a'], 2, /NAME '\.\.\/x'/],
    [['vm', 'new', 'x1', '--host', 'host-a'], 2, /nothing to boot/],
    [['vm', 'frobnicate'], 2, /unknown command/],
  ];
  // A symlink inside the pool that leads out of it is outside too.
  fs.symlinkSync('/tmp', path.join(lab, 'shared', 'link-out'));
  cases.push([
    [
      'vm',
      'new',
      'x1',
      '--host',
      'host-a',
      '--guest',
      'bootblock',
      '--path',
      path.join(lab, 'shared', 'link-out', 'x1'),
    ],
    2,
    /outside every storage pool/,
  ]);
  const before = await fsp.readdir(path.join(lab, 'shared'));
  for (const [args, code, re] of cases) {
    const r = await ferry(args, { lab });
    assert.equal(r.code, code, `${args.join(' ')} → ${r.code}: ${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
  await ferryOk(['vm', 'new', 'dup', '--host', 'host-a', '--guest', 'bootblock'], { lab });
  const dup = await ferry(['vm', 'new', 'dup', '--host', 'host-a', '--guest', 'bootblock'], { lab });
  assert.equal(dup.code, 1);
  assert.match(dup.stderr, /VM 'dup'.*exists/);
  assert.deepEqual(
    (await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab })).map((v) => v.name),
    ['dup'],
  );
  assert.deepEqual(await fsp.readdir(path.join(lab, 'shared')), before);
  assert.equal(fs.existsSync('/etc/x1'), false);
  await ferryOk(['vm', 'rm', 'dup'], { lab });
  fs.unlinkSync(path.join(lab, 'shared', 'link-out'));
});

function get(port: number, opts: https.RequestOptions): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, path: '/v1/vms', method: 'GET', rejectUnauthorized: false, ...opts },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

test('only certificates of this domain get in, and a host certificate is not an admin', async () => {
  const port = Number(new URL(status.hosts[0]!.endpoint).port);
  const ca = fs.readFileSync(path.join(lab, 'domain', 'ca.crt'));
  await assert.rejects(get(port, { ca }), 'no client certificate → handshake refused');

  const other = await initDomain(path.join(dir, 'other-domain'), { name: 'other' });
  const stranger = await issueCert(other, 'admin', 'admin');
  await assert.rejects(
    get(port, { ca, cert: fs.readFileSync(stranger.cert), key: fs.readFileSync(stranger.key) }),
    'another domain → refused',
  );

  const domain = await loadDomain(path.join(lab, 'domain'));
  const hostCert = await issueCert(domain, 'host', 'host-z', { outDir: path.join(dir, 'hz') });
  const hc = { ca, cert: fs.readFileSync(hostCert.cert), key: fs.readFileSync(hostCert.key) };
  assert.equal(await get(port, { ...hc, path: '/v1/vms/nosuch' }), 403, 'a host certificate on an admin-only route');
  assert.equal(await get(port, hc), 200, 'hosts may list VMs (a cluster leader plans drains with it)');
  assert.equal(await get(port, { ...hc, path: '/v1/host' }), 200, 'hosts may read capabilities');
  const admin = {
    ca,
    cert: fs.readFileSync(path.join(lab, 'domain', 'admins', 'admin.crt')),
    key: fs.readFileSync(path.join(lab, 'domain', 'admins', 'admin.key')),
  };
  assert.equal(await get(port, admin), 200);
  assert.equal(await get(port, { ...admin, path: '/openapi.json' }), 200);
  assert.equal(await get(port, { ...admin, path: '/metrics' }), 200);
});

test('lab down stops every process the lab started', async () => {
  await ferryOk(['vm', 'new', 'left', '--host', 'host-b', '--guest', 'bootblock', '--start'], { lab });
  const st = await ferryOk<LabStatus>(['lab', 'status', '--dir', lab, '--json']);
  const vm = await ferryOk<VmView>(['vm', 'show', 'left', '--json'], { lab });
  await ferryOk(['lab', 'down', '--dir', lab]);
  for (const h of st.hosts) assert.equal(pidAlive(h.agentPid!), false, `${h.name} agent gone`);
  assert.equal(pidAlive(vm.pid!), false, 'QEMU gone');
  const after = await ferryOk<LabStatus>(['lab', 'status', '--dir', lab, '--json']);
  assert.deepEqual(
    after.hosts.map((h) => h.up),
    [false, false],
  );
});
