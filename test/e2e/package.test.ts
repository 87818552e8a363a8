// The Debian package, as an administrator meets it: `npm run package` builds it; its
// contents, dependencies and units are checked (systemd-analyze verify); apt installs it on
// this machine; the installed `ferry` runs on its own Node; the installed agent starts from
// /etc/ferry-style configuration, reports readiness the way systemd reads it, refuses bad
// configuration with exit 2; a VM keeps running across a package upgrade and an agent
// restart; remove keeps configuration and VMs, purge keeps VM disks. The machine is left as
// it was. Figures (package size, installed size, start-up time, idle RSS) are printed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT, probeGuestFiles } from '../../guest/paths.js';
import { initDomain, issueCert } from '../../src/domain/ca.js';
import { sleep } from '../../src/util/exec.js';
import { bootSystemdMachine } from './systemd-machine.js';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root: it installs and removes the package with apt-get';
const version = (JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string })
  .version;

let dir = '';
let deb = '';
/** What the test must restore: folders and a user it found before installing. */
const saved: { etc?: string; varlib?: boolean; user: boolean } = { user: false };

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}
function sh(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      {
        encoding: 'utf8',
        timeout: opts.timeoutMs ?? 180_000,
        maxBuffer: 16 * 1024 * 1024,
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive', ...opts.env },
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}
async function ok(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const r = await sh(cmd, args, opts);
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}
const apt = (...args: string[]): Promise<string> =>
  ok('apt-get', ['-y', '-q', '-o', 'DPkg::Lock::Timeout=120', '--no-install-recommends', ...args]);
const installed = (): boolean => {
  try {
    const st = execFileSync('dpkg-query', ['-W', '-f=${db:Status-Status}', 'ferry'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    return st === 'installed';
  } catch {
    return false;
  }
};
const userExists = (u: string): boolean => {
  try {
    execFileSync('getent', ['passwd', u]);
    return true;
  } catch {
    return false;
  }
};

before(async () => {
  if (!root) return;
  if (installed())
    throw new Error('ferry is installed on this machine; this test installs and purges it: remove it first');
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-pkg-'));
  // The host folders the package owns: keep what a previous run or another use left there.
  if (fs.existsSync('/etc/ferry')) {
    saved.etc = path.join(dir, 'etc-ferry');
    await fsp.cp('/etc/ferry', saved.etc, { recursive: true });
  }
  saved.varlib = fs.existsSync('/var/lib/ferry');
  saved.user = userExists('ferry-qemu');
  const out = await ok('npm', ['run', '--silent', 'package', '--', '--out', path.join(dir, 'dist')]);
  deb = out.trim().split('\n').at(-1) ?? '';
});

after(async () => {
  if (!root || !dir) return;
  if (installed()) await sh('apt-get', ['-y', '-q', '-o', 'DPkg::Lock::Timeout=120', 'purge', 'ferry']);
  await fsp.rm('/etc/ferry', { recursive: true, force: true });
  if (saved.etc) await fsp.cp(saved.etc, '/etc/ferry', { recursive: true });
  if (!saved.varlib) await fsp.rm('/var/lib/ferry', { recursive: true, force: true });
  if (!saved.user && userExists('ferry-qemu')) await sh('deluser', ['--quiet', 'ferry-qemu']);
  await fsp.rm(dir, { recursive: true, force: true });
});

test('npm run package builds the .deb with the runtime, the units and the web app', { skip }, async (t) => {
  assert.equal(path.basename(deb), `ferry_${version}_amd64.deb`);
  const list = await ok('dpkg-deb', ['-c', deb]);
  const files = new Map(
    list
      .trim()
      .split('\n')
      .map((l) => {
        const f = l.split(/\s+/);
        return [
          f
            .slice(5)
            .join(' ')
            .replace(/^\.\//, '/')
            .replace(/ -> .*$/, ''),
          f[0] ?? '',
        ] as const;
      }),
  );
  for (const f of [
    '/usr/bin/ferry',
    '/usr/lib/ferry/node',
    '/usr/lib/ferry/cli.mjs',
    '/usr/lib/ferry/cli.cjs',
    '/usr/lib/ferry/launch.cjs',
    '/usr/lib/ferry/heavy.cjs',
    '/usr/lib/ferry/node_modules/better-sqlite3/build/Release/better_sqlite3.node',
    '/usr/lib/ferry/node_modules/koffi/build/koffi/linux_x64/koffi.node',
    '/usr/lib/ferry/proto/etcd3/rpc.proto',
    '/usr/lib/ferry/web/index.html',
    '/lib/systemd/system/ferry-agent.service',
    '/lib/systemd/system/ferry.slice',
    '/usr/lib/tmpfiles.d/ferry.conf',
    '/usr/lib/sysusers.d/ferry.conf',
    '/usr/share/doc/ferry/install.md',
    '/usr/share/doc/ferry/copyright',
  ])
    assert.ok(files.has(f), `${f} is in the package`);
  assert.ok(
    [...files.keys()].some((f) => /^\/usr\/lib\/ferry\/web\/assets\/.+\.js$/.test(f)),
    'the built app',
  );
  assert.match(files.get('/usr/bin/ferry') ?? '', /^-rwxr-xr-x/);
  assert.match(files.get('/usr/lib/ferry/node') ?? '', /^-rwxr-xr-x/);
  const modules = new Set(
    [...files.keys()].map((f) => /^\/usr\/lib\/ferry\/node_modules\/([^/]+)\//.exec(f)?.[1]).filter(Boolean),
  );
  const runtime = ['better-sqlite3', 'bindings', 'file-uri-to-path', 'koffi'];
  assert.deepEqual([...modules].sort(), runtime, 'only runtime modules');
  assert.ok(![...files.keys()].some((f) => f.startsWith('/etc/')), 'no configuration shipped: nothing to overwrite');

  const field = async (f: string): Promise<string> => (await ok('dpkg-deb', ['-f', deb, f])).trim();
  const depends = (await field('Depends')).split(/,\s*/).map((d) => d.split(' ')[0]);
  for (const d of ['qemu-system-x86', 'qemu-utils', 'iproute2', 'openssl']) assert.ok(depends.includes(d), d);
  for (const d of ['chromium', 'gcc', 'nodejs', 'etcd-server']) assert.ok(!depends.includes(d), `no ${d}`);
  assert.equal(await field('Recommends'), 'etcd-server');
  assert.equal(await field('Version'), version);

  // Every shared library the runtime and the native module need is on a stock Debian 12.
  const x = path.join(dir, 'x');
  await ok('dpkg-deb', ['-x', deb, x]);
  for (const elf of [
    'usr/lib/ferry/node',
    'usr/lib/ferry/node_modules/better-sqlite3/build/Release/better_sqlite3.node',
    'usr/lib/ferry/node_modules/koffi/build/koffi/linux_x64/koffi.node',
  ])
    assert.doesNotMatch(await ok('ldd', [path.join(x, elf)]), /not found/, elf);

  const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  const installedKiB = Number(await field('Installed-Size'));
  t.diagnostic(`package ${mib(fs.statSync(deb).size)}, installed size ${mib(installedKiB * 1024)}`);
});

let agent: ChildProcess | null = null;
let notes: Array<{ t: number; pid: number | null; msg: string }> = [];
let listener: ChildProcess | null = null;

after(() => {
  agent?.kill('SIGKILL');
  listener?.kill('SIGKILL');
});

// sd_notify's receiving end, as systemd reads it: the datagram and its sender's pid (SCM_CREDENTIALS).
const NOTIFY_LISTENER = `
import array, json, os, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print(json.dumps({"t": time.time(), "pid": None, "msg": "BOUND"}), flush=True)
while True:
    data, anc, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(64))
    pid = None
    for level, kind, d in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", d[:12])[0]
        elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i"); fds.frombytes(d[: len(d) - len(d) % 4])
            for f in fds: os.close(f)
    print(json.dumps({"t": time.time(), "pid": pid, "msg": data.decode()}), flush=True)
`;

async function startListener(sock: string): Promise<void> {
  notes = [];
  listener = spawn('python3', ['-c', NOTIFY_LISTENER, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
  let buf = '';
  listener.stdout?.setEncoding('utf8').on('data', (c: string) => {
    buf += c;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      notes.push(JSON.parse(buf.slice(0, i)) as (typeof notes)[number]);
      buf = buf.slice(i + 1);
    }
  });
  await until(() => notes.some((n) => n.msg === 'BOUND'), 10_000, 'the notify listener');
}

async function until(pred: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** Starts the installed agent exactly as the unit does, with $NOTIFY_SOCKET; resolves at READY=1. */
async function startInstalledAgent(config: string): Promise<{ pid: number; readyMs: number }> {
  const sock = path.join(dir, `notify-${Date.now()}.sock`);
  await startListener(sock);
  const t0 = Date.now();
  agent = spawn('/usr/bin/ferry', ['agent', '--config', config], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', NOTIFY_SOCKET: sock, FERRY_ACCEL: 'tcg', FERRY_LOG_LEVEL: 'warn' },
  });
  let stderr = '';
  agent.stderr?.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const pid = agent.pid ?? 0;
  await until(
    () => notes.some((n) => n.msg.split('\n').includes('READY=1')) || agent?.exitCode !== null,
    60_000,
    'READY=1',
  ).catch((e: unknown) => {
    throw new Error(`${String(e)}; agent stderr: ${stderr}`);
  });
  assert.equal(agent.exitCode, null, `the agent runs: ${stderr}`);
  const ready = notes.find((n) => n.msg.split('\n').includes('READY=1'))!;
  assert.equal(ready.pid, pid, "READY=1 is sent with the agent's pid (systemd attributes it to the main process)");
  assert.match(ready.msg, /STATUS=serving on 127\.0\.0\.1:\d+/);
  return { pid, readyMs: ready.t * 1000 - t0 };
}

async function stopInstalledAgent(): Promise<void> {
  const a = agent;
  if (!a || a.exitCode !== null) return;
  const exited = new Promise((resolve) => a.once('exit', resolve));
  a.kill('SIGTERM');
  await exited;
  assert.equal(a.exitCode, 0, 'SIGTERM stops the agent cleanly');
  await until(() => notes.some((n) => n.msg === 'STOPPING=1'), 5000, 'STOPPING=1');
  listener?.kill();
}

test(
  'under systemd as PID 1: the unit serves, and restart, stop, upgrade, bad configuration and remove never touch a VM',
  { skip },
  async (t) => {
    // A machine of its own (namespaces over an overlay of this one) whose init is systemd.
    const m = await bootSystemdMachine(dir);
    t.after(() => m.close());
    const inside = (p: string): string => path.join('/ferry-test', path.relative(dir, p));
    await m.ok(['dpkg', '-i', inside(deb)]);
    assert.equal((await m.run(['systemctl', 'is-enabled', 'ferry-agent'])).stdout.trim(), 'disabled');
    assert.equal((await m.run(['systemctl', 'is-active', 'ferry-agent'])).stdout.trim(), 'inactive');

    // The host's certificate and configuration, and a drop-in as an admin would write it
    // (TCG here: this machine's /dev/kvm cannot run a guest).
    const domain = await initDomain(path.join(dir, 'sd-domain'));
    const host = await issueCert(domain, 'host', 'sd-a', { outDir: path.join(dir, 'sd-tls'), ips: ['127.0.0.1'] });
    const admin = await issueCert(domain, 'admin', 'admin', { outDir: path.join(dir, 'sd-admin') });
    await m.ok(['install', '-d', '-m', '0700', '/etc/ferry/tls']);
    await m.ok(['install', '-m', '0644', inside(domain.caCert), '/etc/ferry/tls/ca.crt']);
    await m.ok(['install', '-m', '0644', inside(host.cert), '/etc/ferry/tls/host.crt']);
    await m.ok(['install', '-m', '0600', inside(host.key), '/etc/ferry/tls/host.key']);
    const conf = async (content: unknown): Promise<void> => {
      await fsp.writeFile(path.join(dir, 'sd-agent.json'), JSON.stringify(content));
      await m.ok(['install', '-m', '0640', inside(path.join(dir, 'sd-agent.json')), '/etc/ferry/agent.json']);
    };
    await conf({ name: 'sd-a', listen: '127.0.0.1:7443' });
    await fsp.writeFile(path.join(dir, 'sd-dropin.conf'), '[Service]\nEnvironment=FERRY_ACCEL=tcg\n');
    await m.ok([
      'install',
      '-D',
      '-m',
      '0644',
      inside(path.join(dir, 'sd-dropin.conf')),
      '/etc/systemd/system/ferry-agent.service.d/test.conf',
    ]);
    await m.ok(['systemctl', 'daemon-reload']);
    await m.ok(['systemctl', 'enable', 'ferry-agent']);
    const t0 = Date.now();
    await m.ok(['systemctl', 'start', 'ferry-agent']); // Type=notify: returns at READY=1
    t.diagnostic(`under systemd: systemctl start ferry-agent returned after ${Date.now() - t0} ms (READY=1)`);
    const unit = async (): Promise<Record<string, string>> =>
      Object.fromEntries(
        (
          await m.ok([
            'systemctl',
            'show',
            'ferry-agent',
            '-p',
            'MainPID,ActiveState,SubState,NRestarts,ExecMainStatus,StatusText',
          ])
        )
          .trim()
          .split('\n')
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
      );
    const u1 = await unit();
    assert.equal(u1.ActiveState, 'active');
    assert.match(u1.StatusText ?? '', /^serving on 127\.0\.0\.1:7443$/);
    // The unified (v2) line: on a hybrid host the v1 controllers are listed too, each at '/'.
    const unified = (text: string): string => text.split('\n').find((l) => l.startsWith('0::')) ?? text.trim();
    assert.equal(unified(await m.ok(['cat', `/proc/${u1.MainPID}/cgroup`])), '0::/ferry.slice/ferry-agent.service');

    await fsp.writeFile(
      path.join(dir, 'sd-context.json'),
      JSON.stringify({
        ca: inside(domain.caCert),
        cert: inside(admin.cert),
        key: inside(admin.key),
        hosts: [{ name: 'sd-a', endpoint: 'https://127.0.0.1:7443' }],
      }),
    );
    const ferry = (...a: string[]): Promise<string> =>
      m.ok(['ferry', '--context', inside(path.join(dir, 'sd-context.json')), ...a]);
    await ferry('vm', 'new', 'v1', '--host', 'sd-a', '--guest', 'bootblock', '--memory', '128M', '--start');
    const vm = JSON.parse(await ferry('vm', 'show', 'v1', '--json')) as { id: string; state: string };
    assert.equal(vm.state, 'running');
    const qemu = (await m.ok(['cat', `/var/lib/ferry/run/${vm.id}/qemu.pid`])).trim();
    const cgroup = unified(await m.ok(['cat', `/proc/${qemu}/cgroup`]));
    assert.match(cgroup, /^0::\/machine\.slice\/ferry-vm-v1-[0-9a-f]{6}\.scope$/, 'QEMU runs in its own scope');
    const scope = cgroup.split('/').at(-1)!;
    // A kernel-booted VM: QEMU gets its kernel and initrd as descriptors the agent opened
    // (src/vm/boot-files.ts), through systemd-run's scope and exec, not as paths.
    const probe = probeGuestFiles();
    assert.ok(probe, 'the probe guest is built (scripts/setup)');
    await fsp.copyFile(probe.kernel, path.join(dir, 'vmlinuz'));
    await fsp.copyFile(probe.initrd, path.join(dir, 'initrd.img'));
    await ferry(
      ...['vm', 'new', 'k1', '--host', 'sd-a', '--memory', '128M', '--start'],
      ...['--kernel', inside(path.join(dir, 'vmlinuz')), '--initrd', inside(path.join(dir, 'initrd.img'))],
    );
    const k1 = JSON.parse(await ferry('vm', 'show', 'k1', '--json')) as { id: string; state: string };
    assert.equal(k1.state, 'running');
    const k1Pid = (await m.ok(['cat', `/var/lib/ferry/run/${k1.id}/qemu.pid`])).trim();
    const k1Argv = (await m.ok(['cat', `/proc/${k1Pid}/cmdline`])).split('\0');
    const kernelFd = k1Argv[k1Argv.indexOf('-kernel') + 1] ?? '';
    assert.match(kernelFd, /^\/proc\/self\/fd\/\d+$/, 'the kernel is a descriptor');
    assert.match(
      (await m.ok(['readlink', `/proc/${k1Pid}/fd/${kernelFd.split('/').pop()}`])).trim(),
      /\/vmlinuz$/,
      "QEMU's descriptor is the VM's kernel",
    );
    await ferry('vm', 'stop', 'k1', '--force');
    await ferry('vm', 'rm', 'k1');
    const alive = async (what: string): Promise<void> => {
      assert.equal((await m.run(['kill', '-0', qemu])).code, 0, `QEMU survives ${what}`);
      assert.equal((await m.ok(['systemctl', 'is-active', scope])).trim(), 'active');
    };
    const running = async (what: string): Promise<void> => {
      const v = JSON.parse(await ferry('vm', 'show', 'v1', '--json')) as { state: string };
      assert.equal(v.state, 'running', `the agent re-attached to the VM after ${what}`);
    };

    await m.ok(['systemctl', 'restart', 'ferry-agent']);
    const u2 = await unit();
    assert.notEqual(u2.MainPID, u1.MainPID);
    await alive('systemctl restart ferry-agent');
    await running('the restart');

    const t1 = Date.now();
    await m.ok(['systemctl', 'stop', 'ferry-agent']);
    assert.ok(Date.now() - t1 < 10_000, 'the agent exits at SIGTERM although its VM runs on (no stop timeout)');
    assert.equal((await unit()).ActiveState, 'inactive', 'a clean stop, not a failure');
    await alive('systemctl stop ferry-agent');
    await m.ok(['systemctl', 'start', 'ferry-agent']);
    await running('stop and start');

    // An upgrade: postinst restarts the running agent; the VM stays.
    const next = `${version}+test1`;
    const rebuilt = path.join(dir, 'rebuild');
    await ok('dpkg-deb', ['-R', deb, rebuilt]);
    const control = path.join(rebuilt, 'DEBIAN', 'control');
    await fsp.writeFile(control, (await fsp.readFile(control, 'utf8')).replace(/^Version: .*$/m, `Version: ${next}`));
    const newer = path.join(dir, `ferry_${next}_amd64.deb`);
    await ok('dpkg-deb', ['--root-owner-group', '-Zzstd', '-z1', '--build', rebuilt, newer]);
    await fsp.rm(rebuilt, { recursive: true });
    const before = (await unit()).MainPID;
    await m.ok(['dpkg', '-i', inside(newer)]);
    const u3 = await unit();
    assert.equal(u3.ActiveState, 'active');
    assert.notEqual(u3.MainPID, before, 'the upgrade restarted the agent');
    // The rebuilt package differs only in its control file: dpkg has the new version installed.
    assert.equal((await m.ok(['dpkg-query', '-W', '-f=${Version}', 'ferry'])).trim(), next);
    await alive('the package upgrade');
    await running('the upgrade');

    // A configuration error: exit 2, the unit fails once and is not restarted.
    await conf({ name: 'sd-a', listn: '127.0.0.1:7443' });
    assert.notEqual((await m.run(['systemctl', 'restart', 'ferry-agent'])).code, 0);
    await sleep(6500); // longer than RestartSec=5s
    const u4 = await unit();
    assert.equal(u4.ActiveState, 'failed');
    assert.equal(u4.ExecMainStatus, '2');
    assert.equal(u4.NRestarts, '0', 'no restart loop');
    await alive('a failed agent');
    await conf({ name: 'sd-a', listen: '127.0.0.1:7443' });
    await m.ok(['systemctl', 'start', 'ferry-agent']);
    await running('the configuration was fixed');

    // This host as an etcd member: Debian's etcd.service with the documented drop-in (the
    // host's certificate copied for the etcd user at each start); the packaged agent creates a cluster on it.
    await m.ok([
      'install',
      '-D',
      '-m',
      '0644',
      '/usr/share/doc/ferry/examples/etcd-ferry.conf',
      '/etc/systemd/system/etcd.service.d/ferry.conf',
    ]);
    const url = (port: number): string => `https://127.0.0.1:${port}`;
    await fsp.writeFile(
      path.join(dir, 'sd-etcd'),
      [
        'ETCD_NAME=sd-a',
        'ETCD_DATA_DIR=/var/lib/etcd/ferry',
        `ETCD_LISTEN_CLIENT_URLS=${url(2379)}`,
        `ETCD_ADVERTISE_CLIENT_URLS=${url(2379)}`,
        `ETCD_LISTEN_PEER_URLS=${url(2380)}`,
        `ETCD_INITIAL_ADVERTISE_PEER_URLS=${url(2380)}`,
        `ETCD_INITIAL_CLUSTER=sd-a=${url(2380)}`,
        'ETCD_INITIAL_CLUSTER_STATE=new',
        '',
      ].join('\n'),
    );
    await m.ok(['install', '-m', '0644', inside(path.join(dir, 'sd-etcd')), '/etc/default/etcd']);
    await m.ok(['systemctl', 'daemon-reload']);
    const etcd = await m.run(['systemctl', 'start', 'etcd']);
    if (etcd.code !== 0) {
      const journal = await m.run(['journalctl', '-u', 'etcd', '-n', '25', '--no-pager']);
      assert.fail(`etcd did not start under the drop-in:\n${journal.stdout}${journal.stderr}`);
    }
    await ferry('cluster', 'create', 'sd', '--host', 'sd-a', '--etcd', url(2379));
    const cluster = JSON.parse(await ferry('cluster', 'status', '--json')) as { nodes: Array<{ name: string }> };
    assert.deepEqual(
      cluster.nodes.map((n) => n.name),
      ['sd-a'],
    );

    // Remove: prerm stops the agent; the VM keeps running.
    const removed = await m.ok(['dpkg', '-r', 'ferry']);
    assert.match(removed, /running VMs keep running/);
    assert.equal((await m.run(['systemctl', 'is-active', 'ferry-agent'])).stdout.trim(), 'inactive');
    await alive('apt remove ferry');
  },
);

test(
  'apt installs it; ferry runs on its own Node; the units verify; the agent serves, and bad configuration exits 2',
  { skip },
  async (t) => {
    await apt('install', deb);
    assert.ok(installed());

    assert.equal((await ok('/usr/bin/ferry', ['--version'])).trim(), version);
    const rt = JSON.parse(await ok('/usr/bin/ferry', ['debug-runtime'], { env: { PATH: '/usr/bin:/bin' } })) as Record<
      string,
      string
    >;
    assert.equal(rt.execPath, '/usr/lib/ferry/node', 'the packaged runtime, not the system Node');
    assert.equal(rt.script, '/usr/lib/ferry/launch.cjs', 'a command starts through the code-cache entry');
    assert.equal(rt.node, process.version);
    assert.equal(rt.webDir, '/usr/lib/ferry/web', 'the console finds the installed web app');
    assert.match(rt.sqlite ?? '', /^3\./, 'the native module loads');

    // What postinst made: the QEMU user, the folders (0750); nothing enabled or started.
    assert.ok(userExists('ferry-qemu'));
    if (fs.existsSync('/dev/kvm') && (await sh('getent', ['group', 'kvm'])).code === 0)
      assert.match(await ok('id', ['-nG', 'ferry-qemu']), /\bkvm\b/);
    for (const d of ['/etc/ferry', '/var/lib/ferry']) assert.equal(fs.statSync(d).mode & 0o777, 0o750, d);
    assert.ok(fs.statSync('/var/lib/ferry/pools/local').isDirectory());
    assert.ok(fs.statSync('/run/ferry').isDirectory(), 'tmpfiles.d made /run/ferry');
    assert.equal(fs.existsSync('/etc/systemd/system/multi-user.target.wants/ferry-agent.service'), false);

    // systemd-analyze accepts the installed unit and the documented etcd drop-in, without a warning.
    const verify = await sh('systemd-analyze', ['verify', '/lib/systemd/system/ferry-agent.service']);
    assert.equal(verify.code, 0, verify.stderr);
    assert.equal(verify.stderr.trim(), '', 'no warning about ferry-agent.service');
    const etcd = path.join(dir, 'etcd-check');
    await fsp.mkdir(path.join(etcd, 'etcd.service.d'), { recursive: true });
    await fsp.copyFile('/lib/systemd/system/etcd.service', path.join(etcd, 'etcd.service'));
    await fsp.copyFile(
      '/usr/share/doc/ferry/examples/etcd-ferry.conf',
      path.join(etcd, 'etcd.service.d', 'ferry.conf'),
    );
    const ev = await sh('systemd-analyze', ['verify', path.join(etcd, 'etcd.service')]);
    assert.equal(ev.code, 0, ev.stderr);
    assert.equal(ev.stderr.trim(), '', 'no warning about the etcd drop-in');

    // Bad configuration: one clear line, exit 2 (RestartPreventExitStatus=2: no crash loop).
    const bad = async (content: unknown, re: RegExp): Promise<void> => {
      const f = path.join(dir, 'bad.json');
      await fsp.writeFile(f, JSON.stringify(content));
      const r = await sh('/usr/bin/ferry', ['agent', '--config', f]);
      assert.equal(r.code, 2, `exit 2 for ${JSON.stringify(content)}: ${r.stderr}`);
      assert.match(r.stderr.trim(), re);
      assert.equal(r.stderr.trim().split('\n').length, 1, 'one line, no stack trace');
    };
    await bad(
      { name: 'hv1', listn: '0.0.0.0' },
      /^ferry: Cannot start the agent: .*bad\.json: field 'listn' is not a setting Ferry knows .*; fix it/,
    );
    await bad(
      { name: 'hv1', migrationPorts: '7000-8000' },
      /field 'migrationPorts' \("7000-8000"\) includes the agent's own port 7443 .*choose a range without it/,
    );
    await bad(
      { name: 'hv1', dataDir: '/tmp/x', tlsDir: path.join(dir, 'none') },
      /Cannot start agent 'hv1': .*ca\.crt is missing/,
    );

    // The installed agent, started as the unit starts it: readiness, runtime, idle memory.
    const domain = await initDomain(path.join(dir, 'domain'));
    const tlsDir = path.join(dir, 'tls');
    const host = await issueCert(domain, 'host', 'pkg-a', { outDir: tlsDir, ips: ['127.0.0.1'] });
    await fsp.rename(host.cert, path.join(tlsDir, 'host.crt'));
    await fsp.rename(host.key, path.join(tlsDir, 'host.key'));
    await fsp.copyFile(domain.caCert, path.join(tlsDir, 'ca.crt'));
    const admin = await issueCert(domain, 'admin', 'admin', { outDir: path.join(dir, 'admin') });
    const port = await freePort();
    const config = path.join(dir, 'agent.json');
    await fsp.writeFile(
      config,
      JSON.stringify({
        name: 'pkg-a',
        listen: `127.0.0.1:${port}`,
        dataDir: path.join(dir, 'data'),
        tlsDir,
        migrationPorts: '51000-51063',
      }),
    );
    const context = path.join(dir, 'context.json');
    await fsp.writeFile(
      context,
      JSON.stringify({
        ca: domain.caCert,
        cert: admin.cert,
        key: admin.key,
        hosts: [{ name: 'pkg-a', endpoint: `https://127.0.0.1:${port}` }],
      }),
    );
    const first = await startInstalledAgent(config);
    assert.equal(fs.readlinkSync(`/proc/${first.pid}/exe`), '/usr/lib/ferry/node');
    await sleep(2000);
    const rss = Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${first.pid}/status`, 'utf8'))?.[1]);
    t.diagnostic(`agent ready ${first.readyMs} ms after start (READY=1), idle RSS ${(rss / 1024).toFixed(0)} MiB`);
    const hostView = JSON.parse(
      await ok('/usr/bin/ferry', ['--context', context, 'host', 'show', 'pkg-a', '--json']),
    ) as { name: string };
    assert.equal(hostView.name, 'pkg-a', 'the packaged CLI talks to the packaged agent');
    await stopInstalledAgent();
  },
);

test(
  'remove keeps configuration, data and VM disks; purge deletes the configuration only and says what it kept',
  { skip },
  async () => {
    const disk = '/var/lib/ferry/pools/local/pkg-test-vm/disk0.qcow2';
    await fsp.mkdir(path.dirname(disk), { recursive: true });
    await fsp.writeFile(disk, 'a VM disk');
    await fsp.writeFile('/etc/ferry/agent.json', '{"name":"hv1"}');
    await fsp.writeFile('/var/lib/ferry/ferry.db', '');

    await apt('remove', 'ferry');
    assert.equal(fs.existsSync('/usr/bin/ferry'), false);
    assert.equal(fs.existsSync('/usr/lib/ferry'), false);
    assert.ok(fs.existsSync('/etc/ferry/agent.json'), 'remove keeps the configuration');
    assert.ok(fs.existsSync(disk) && fs.existsSync('/var/lib/ferry/ferry.db'), 'and the data');

    const out = await apt('purge', 'ferry');
    assert.equal(installed(), false);
    assert.equal(fs.existsSync('/etc/ferry'), false, 'purge deletes the configuration');
    assert.equal(await fsp.readFile(disk, 'utf8'), 'a VM disk', 'never a VM disk');
    assert.match(out, /purge deleted \/etc\/ferry and kept \/var\/lib\/ferry/);
    assert.match(out, /\/var\/lib\/ferry\/ferry\.db/);
    assert.match(out, /VM folders and images are left in place/);
  },
);
