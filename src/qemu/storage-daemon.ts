// qemu-storage-daemon for a stopped VM's disks: QEMU's block layer without a guest, driven over
// QMP like a VM's QEMU. A stopped VM's shared-nothing or storage move runs the same resumable
// backup passes through it as a running VM's (kinds/stopped-copy.ts), so its persistent dirty
// bitmap is stored in the qcow2 when the daemon quits and a retry resumes from it (issue 17
// item 6). It runs as QEMU's user and opens the disks with the nodes QEMU would (argv.ts
// diskBlockdevs: the checked backing chain pinned), detached so an agent restart does not kill
// it mid-write; the move's undo (or its recovery after a restart) stops it, found by its folder.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { AbortedError, FerryError, messageOf } from '../errors.js';
import { sleep } from '../util/exec.js';
import { QmpClient } from './qmp.js';
import { dropPrivilegesArgs, prepareRunDir, qemuUser } from './user.js';

export const STORAGE_DAEMON_BINARY = process.env.FERRY_QEMU_STORAGE_DAEMON ?? 'qemu-storage-daemon';

export class StorageDaemonError extends FerryError {
  constructor(vm: string, reason: string, cause?: unknown) {
    super(
      'E_STORAGE_DAEMON',
      `Cannot open the disks of VM '${vm}' for copying: qemu-storage-daemon ${reason}; ` +
        'install qemu-system-common (it ships the daemon) or move the VM with --resumable never',
      { context: { vm }, cause },
    );
  }
}

/** Is `pid` still the daemon that runs in `dir` (a reused pid is someone else's)? */
export function isDaemonOf(pid: number, dir: string): boolean {
  try {
    const args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return args.some((a) => a.endsWith('qemu-storage-daemon')) && args.some((a) => a.includes(path.resolve(dir) + '/'));
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
    const [file = STORAGE_DAEMON_BINARY, ...args] = [
      ...runAs,
      STORAGE_DAEMON_BINARY,
      '--chardev',
      `socket,id=qmp,path=${sock},server=on,wait=off`,
      '--monitor',
      'chardev=qmp',
      // A second monitor for an administrator (and the tests), as a VM's QEMU has: a monitor
      // socket serves one client at a time and the agent holds the first.
      '--chardev',
      `socket,id=qmp-admin,path=${path.join(dir, 'qmp-admin.sock')},server=on,wait=off`,
      '--monitor',
      'chardev=qmp-admin',
      '--pidfile',
      pidFile,
      ...blockdevs.flatMap((b) => ['--blockdev', b]),
    ];
    const child = spawn(file, args, { detached: true, stdio: ['ignore', errFd, errFd] });
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
