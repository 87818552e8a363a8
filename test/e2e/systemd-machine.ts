// A throw-away "machine" with systemd as PID 1, for testing units and maintainer scripts on
// a machine whose own init is not systemd: new pid, mount, network, UTS, IPC and cgroup
// namespaces over an overlay of this machine's root (every write lands in a tmpfs and is
// gone afterwards), /sys and /proc/sys read-only, no module loading, no clock setting. It
// boots only an empty target of its own, so none of the host's services start; a unit the
// test starts pulls in just what it needs.
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sleep } from '../../src/util/exec.js';

const BOOT = `
set -euo pipefail
R=$1 SHARE=$2
mount -t tmpfs -o mode=0755 ferry-machine "$R"
mkdir -p "$R/upper" "$R/work" "$R/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$R/upper,workdir=$R/work" "$R/root"
cd "$R/root"
printf '[Unit]\\nDescription=Ferry test machine\\n' > etc/systemd/system/ferry-test.target
mkdir -p ferry-test && mount --bind "$SHARE" ferry-test
mount -t proc proc proc
mount -t sysfs -o ro sysfs sys
mount -t cgroup2 cgroup2 sys/fs/cgroup
mount --rbind /dev dev
mount -t tmpfs -o mode=0755 tmpfs run
mount -t tmpfs -o mode=1777 tmpfs tmp
mkdir -p oldroot
pivot_root . oldroot
cd /
umount -l /oldroot
mount --bind -o ro /proc/sys /proc/sys
exec env -i container=ferry-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \\
  setpriv --bounding-set=-sys_module,-sys_time,-sys_boot -- /lib/systemd/systemd --system --unit=ferry-test.target
`;

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export interface SystemdMachine {
  /** The machine's systemd (PID 1 inside), as a pid of this machine. */
  pid: number;
  /** Runs a command inside (all its namespaces). */
  run(cmd: string[], opts?: { timeoutMs?: number; env?: Record<string, string> }): Promise<Run>;
  /** Runs and expects exit 0; returns stdout. */
  ok(cmd: string[], opts?: { timeoutMs?: number; env?: Record<string, string> }): Promise<string>;
  /** Kills everything inside and removes every trace. */
  close(): Promise<void>;
}

/** The cgroup v2 hierarchy of this machine (pure v2, or the unified part of a hybrid set-up). */
function cgroup2Root(): string {
  if (fs.existsSync('/sys/fs/cgroup/cgroup.controllers')) return '/sys/fs/cgroup';
  if (fs.existsSync('/sys/fs/cgroup/unified/cgroup.controllers')) return '/sys/fs/cgroup/unified';
  throw new Error('no cgroup v2 hierarchy on this machine: systemd cannot run as PID 1 here');
}

/** Boots the machine; `share` (a folder of this machine) appears inside as /ferry-test. */
export async function bootSystemdMachine(share: string, opts: { timeoutMs?: number } = {}): Promise<SystemdMachine> {
  const cg = path.join(cgroup2Root(), `ferry-machine-${process.pid}-${Date.now()}`);
  const rootDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-machine-'));
  const log = path.join(share, 'machine-console.log');
  await fsp.mkdir(cg);
  const fd = fs.openSync(log, 'w');
  // The shell joins the machine's cgroup first: the cgroup namespace makes it the machine's root.
  const child = spawn(
    'sh',
    [
      '-c',
      `echo $$ > ${cg}/cgroup.procs && exec unshare --pid --fork --mount --uts --ipc --net --cgroup ` +
        `--propagation private bash -c "$0" boot "$1" "$2"`,
      BOOT,
      rootDir,
      share,
    ],
    { stdio: ['ignore', fd, fd], detached: true },
  );
  fs.closeSync(fd);
  child.unref();

  let pid = 0;
  const close = async (): Promise<void> => {
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL'); // the namespace's init: the kernel kills everything inside
      } catch {
        /* gone */
      }
    } else child.kill('SIGKILL');
    for (let i = 0; i < 100 && (await populated(cg)); i++) await sleep(100);
    await removeCgroup(cg);
    await fsp.rm(rootDir, { recursive: true, force: true });
  };
  const run = (cmd: string[], o: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<Run> =>
    new Promise((resolve) => {
      const env = Object.entries(o.env ?? {}).map(([k, v]) => `${k}=${v}`);
      execFile(
        'nsenter',
        [
          '-t',
          String(pid),
          '-a',
          'env',
          'PATH=/usr/sbin:/usr/bin:/sbin:/bin',
          'DEBIAN_FRONTEND=noninteractive',
          ...env,
          ...cmd,
        ],
        { encoding: 'utf8', timeout: o.timeoutMs ?? 120_000, maxBuffer: 16 * 1024 * 1024 },
        (err, stdout, stderr) => {
          resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
        },
      );
    });
  const machine: SystemdMachine = {
    get pid() {
      return pid;
    },
    run,
    async ok(cmd, o) {
      const r = await run(cmd, o);
      if (r.code !== 0)
        throw new Error(`${cmd.join(' ')} exited ${r.code} in the test machine: ${r.stderr}${r.stdout}`);
      return r.stdout;
    },
    close,
  };
  try {
    const until = Date.now() + (opts.timeoutMs ?? 30_000);
    while (!pid) {
      if (Date.now() > until) throw new Error(`systemd did not start: ${await fsp.readFile(log, 'utf8')}`);
      const procs = await fsp.readFile(path.join(cg, 'init.scope', 'cgroup.procs'), 'utf8').catch(() => '');
      pid = Number(procs.split('\n')[0]) || 0;
      if (!pid) await sleep(50);
    }
    // PID 1 exists before its control socket does: wait for the socket, then for the boot.
    let state = await run(['systemctl', 'is-system-running', '--wait'], { timeoutMs: opts.timeoutMs ?? 30_000 });
    while (/Failed to connect to bus/.test(state.stderr)) {
      if (Date.now() > until) throw new Error(`systemd does not answer: ${state.stderr}`);
      await sleep(100);
      state = await run(['systemctl', 'is-system-running', '--wait'], { timeoutMs: opts.timeoutMs ?? 30_000 });
    }
    if (state.stdout.trim() !== 'running')
      throw new Error(
        `systemd is ${state.stdout.trim()} ${state.stderr}: ${(await run(['systemctl', '--failed'])).stdout}`,
      );
    return machine;
  } catch (err) {
    await close();
    throw err;
  }
}

async function populated(cg: string): Promise<boolean> {
  const events = await fsp.readFile(path.join(cg, 'cgroup.events'), 'utf8').catch(() => 'populated 0');
  return /populated 1/.test(events);
}

/** Removes a cgroup and the ones systemd made inside it, deepest first. */
async function removeCgroup(cg: string): Promise<void> {
  const entries = await fsp.readdir(cg, { withFileTypes: true }).catch(() => []);
  for (const e of entries) if (e.isDirectory()) await removeCgroup(path.join(cg, e.name));
  await fsp.rmdir(cg).catch(() => undefined);
}
