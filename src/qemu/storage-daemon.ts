// A disk daemon for a stopped VM's disks: QEMU's block layer without a guest, driven over QMP
// like a VM's QEMU. A stopped VM's shared-nothing or storage move runs the same resumable backup
// passes through it as a running VM's (kinds/stopped-copy.ts), so its persistent dirty bitmap is
// stored in the qcow2 when the daemon quits and a retry resumes from it (issue 17 item 6). It is
// the VM's own QEMU binary with no machine (`-machine none`), not qemu-storage-daemon: that one
// has no `-sandbox` in 7.2, and these disks may sit on a pool another host writes (issue 14).
// It runs as QEMU's user, sandboxed as a VM's QEMU is, and opens the disks with the nodes QEMU
// would (argv.ts diskBlockdevs: the checked backing chain pinned), detached so an agent restart
// does not kill it mid-write; the move's undo (or its recovery after a restart) stops it, found
// by its folder.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { AbortedError, FerryError, messageOf } from '../errors.js';
import { sleep } from '../util/exec.js';
import { qemuEnv } from './malloc-tunables.js';
import { QEMU_BINARY } from './process.js';
import { QmpClient } from './qmp.js';
import { SANDBOX_ARGS } from './sandbox.js';
import { dropPrivilegesArgs, prepareRunDir, qemuUser } from './user.js';

/** What marks a disk daemon's command line (with its folder): a VM's QEMU always has a machine. */
const NO_MACHINE = ['-machine', 'none'];

export class StorageDaemonError extends FerryError {
  constructor(vm: string, reason: string, cause?: unknown) {
    super(
      'E_STORAGE_DAEMON',
      `Cannot open the disks of VM '${vm}' for copying: the disk daemon (QEMU without a guest) ${reason}; ` +
        "check the daemon's log (daemon.stderr.log in the move's run folder), or move the VM with --resumable never",
      { context: { vm }, cause },
    );
  }
}

/**
 * Is `pid` still the daemon that runs in `dir` (a reused pid is someone else's)? A QEMU with no
 * machine, or a qemu-storage-daemon that a Ferry before this one left running mid-copy.
 */
export function isDaemonOf(pid: number, dir: string): boolean {
  try {
    const args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const noMachine = args.some((a, i) => a === NO_MACHINE[0] && args[i + 1] === NO_MACHINE[1]);
    const daemon = noMachine || args.some((a) => a.endsWith('qemu-storage-daemon'));
    return daemon && args.some((a) => a.includes(path.resolve(dir) + '/'));
  } catch {
    return false;
  }
}

/**
 * Stops (SIGTERM: a clean close, as quit) every daemon running in `dir`: an agent restarted
 * mid-copy, or killed between the spawn and its journal entry. Waits up to `timeoutMs`, then SIGKILL.
 */
export async function stopDaemonsOf(dir: string, timeoutMs = 30_000): Promise<void> {
  const pids = fs
    .readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .map(Number)
    .filter((pid) => isDaemonOf(pid, dir));
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* gone */
    }
  }
  for (const pid of pids) await waitGone(pid, dir, timeoutMs);
}

async function waitGone(pid: number, dir: string, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (isDaemonOf(pid, dir)) {
    if (Date.now() > until) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      for (let k = 0; k < 50 && isDaemonOf(pid, dir); k++) await sleep(100);
      return;
    }
    await sleep(50);
  }
}

export class StorageDaemon {
  private constructor(
    readonly vm: string,
    readonly pid: number,
    readonly qmp: QmpClient,
    readonly dir: string,
  ) {}

  /** Starts the daemon in `dir` (its socket, pid file and log) with `blockdevs` (JSON values). */
  static async start(
    vm: string,
    blockdevs: readonly string[],
    dir: string,
    opts: { signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<StorageDaemon> {
    await prepareRunDir(dir);
    const sock = path.join(dir, 'qmp.sock');
    const pidFile = path.join(dir, 'daemon.pid');
    await fsp.rm(sock, { force: true });
    const log = path.join(dir, 'daemon.stderr.log');
    const errFd = fs.openSync(log, 'w');
    const u = qemuUser();
    const runAs = u && process.getuid?.() === 0 ? dropPrivilegesArgs(u) : [];
    const [file = QEMU_BINARY, ...args] = [
      ...runAs,
      QEMU_BINARY,
      ...['-nodefaults', '-no-user-config', '-display', 'none', ...NO_MACHINE, ...SANDBOX_ARGS],
      '-chardev',
      `socket,id=qmp,path=${sock},server=on,wait=off`,
      '-mon',
      'chardev=qmp,mode=control',
      // A second monitor for an administrator (and the tests), as a VM's QEMU has: a monitor
      // socket serves one client at a time and the agent holds the first.
      '-chardev',
      `socket,id=qmp-admin,path=${path.join(dir, 'qmp-admin.sock')},server=on,wait=off`,
      '-mon',
      'chardev=qmp-admin,mode=control',
      '-pidfile',
      pidFile,
      ...blockdevs.flatMap((b) => ['-blockdev', b]),
    ];
    const child = spawn(file, args, { detached: true, env: qemuEnv(), stdio: ['ignore', errFd, errFd] });
    fs.closeSync(errFd);
    child.unref();
    const gone = { exited: false };
    const early = new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.once('error', () => resolve());
    }).then(() => {
      gone.exited = true;
    });
    const reason = async (): Promise<string> =>
      (await fsp.readFile(log, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' / ') || 'exited';
    if (child.pid === undefined) {
      await early;
      throw new StorageDaemonError(vm, `could not be run (${await reason()})`);
    }
    const ac = new AbortController();
    void early.then(() => ac.abort());
    const signal = opts.signal ? AbortSignal.any([opts.signal, ac.signal]) : ac.signal;
    try {
      const qmp = await QmpClient.connect(sock, { vm, signal, timeoutMs: opts.timeoutMs ?? 20_000 });
      return new StorageDaemon(vm, child.pid, qmp, dir);
    } catch (err) {
      if (!gone.exited) process.kill(child.pid, 'SIGKILL');
      if (opts.signal?.aborted) throw new AbortedError(`open the disks of VM '${vm}'`, opts.signal.reason);
      throw new StorageDaemonError(vm, `failed at start-up: ${gone.exited ? await reason() : messageOf(err)}`, err);
    }
  }

  /** SIGKILL, before any copy began (its images were not what the agent checked). */
  async kill(): Promise<void> {
    this.qmp.close();
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    await waitGone(this.pid, this.dir, 5000);
  }

  /**
   * QMP quit: the daemon closes the images, which stores their persistent bitmaps (what a
   * retry resumes from); SIGKILL only past `timeoutMs` (a bitmap then reads inconsistent and
   * the retry copies the disk whole: safe, only slower). Never throws.
   */
  async quit(opts: { timeoutMs?: number } = {}): Promise<void> {
    await this.qmp.execute('quit', undefined, { timeoutMs: 10_000 }).catch(() => undefined);
    this.qmp.close();
    await waitGone(this.pid, this.dir, opts.timeoutMs ?? 30_000);
  }
}
