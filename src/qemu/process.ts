// One QEMU process: spawn it detached, in its own systemd scope when systemd is init (so an
// agent restart never stops a VM), detect an early exit and report QEMU's own reason,
// connect QMP, quit gracefully or kill.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { FerryError, AbortedError, messageOf } from '../errors.js';
import { sleep } from '../util/exec.js';
import { QmpClient } from './qmp.js';
import { qemuEnv } from './malloc-tunables.js';
import { qemuLaunchCommand, useScopes } from './scope.js';
import { dropPrivilegesArgs, qemuUser } from './user.js';

export const QEMU_BINARY = process.env.FERRY_QEMU ?? 'qemu-system-x86_64';

export class QemuStartError extends FerryError {
  constructor(vm: string, reason: string, context: Record<string, unknown> = {}, cause?: unknown) {
    super(
      'E_QEMU_START',
      `Cannot start VM '${vm}': QEMU exited at start-up: ${reason}; fix the cause above and start it again`,
      {
        context: { vm, ...context },
        cause,
      },
    );
  }
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnOptions {
  vm: string;
  /** Folder for the QEMU stderr log (the rest of the paths are in argv). */
  runDir: string;
  qmpSocket: string;
  pidFile: string;
  signal?: AbortSignal;
  /** How long QEMU may take to open its monitor (default 20 s). */
  timeoutMs?: number;
  /** Descriptors QEMU inherits as its fds 3, 4, … (the boot files the agent opened: vm/boot-files.ts). */
  passFds?: readonly number[];
}

export class QemuProcess {
  readonly vm: string;
  readonly pid: number;
  readonly qmp: QmpClient;
  readonly stderrPath: string;
  private childExit: Promise<ExitInfo>;
  private exitInfo: ExitInfo | null = null;
  private gone: Promise<ExitInfo> | null = null;

  private constructor(vm: string, pid: number, qmp: QmpClient, stderrPath: string, exited: Promise<ExitInfo>) {
    this.vm = vm;
    this.pid = pid;
    this.qmp = qmp;
    this.stderrPath = stderrPath;
    this.childExit = exited.then((e) => {
      this.exitInfo = e;
      return e;
    });
  }

  /** Resolves when the process is gone (child exit, or a re-attached pid that vanished). */
  get exited(): Promise<ExitInfo> {
    return this.awaitGone();
  }

  get hasExited(): boolean {
    return this.exitInfo !== null || !isQemuAlive(this.pid);
  }

  static async spawn(argv: string[], opts: SpawnOptions): Promise<QemuProcess> {
    await fsp.mkdir(opts.runDir, { recursive: true });
    await fsp.rm(opts.qmpSocket, { force: true });
    await fsp.rm(opts.pidFile, { force: true });
    const stderrPath = path.join(opts.runDir, 'qemu.stderr.log');
    const errFd = fs.openSync(stderrPath, 'w');
    const launch = qemuLaunchCommand(QEMU_BINARY, argv, {
      vm: opts.vm,
      useScope: useScopes(),
      // Only root may raise a priority; `nice` would warn and run QEMU as niced as we are.
      agentNice: process.getuid?.() === 0 ? Math.max(0, os.getPriority()) : 0,
      runAs: runAsArgs(),
    });
    const child = spawn(launch.file, launch.args, {
      detached: true,
      env: qemuEnv(),
      stdio: ['ignore', errFd, errFd, ...(opts.passFds ?? [])],
    });
    fs.closeSync(errFd);
    const exited = new Promise<ExitInfo>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', () => resolve({ code: -1, signal: null }));
    });
    child.unref();
    const pid = child.pid;
    if (pid === undefined) {
      const e = await exited;
      throw new QemuStartError(
        opts.vm,
        `${launch.file} could not be run (exit ${e.code}); install ${launch.scope ? 'systemd' : 'qemu-system-x86'}`,
      );
    }
    // Race QMP against an early exit: a missing image or a bad option ends QEMU at once.
    const ac = new AbortController();
    const sig = opts.signal ? AbortSignal.any([opts.signal, ac.signal]) : ac.signal;
    const early = exited.then((e) => {
      ac.abort();
      return e;
    });
    try {
      const qmp = await QmpClient.connect(opts.qmpSocket, {
        vm: opts.vm,
        signal: sig,
        timeoutMs: opts.timeoutMs ?? 20_000,
      });
      return new QemuProcess(opts.vm, pid, qmp, stderrPath, exited);
    } catch (err) {
      if (ac.signal.aborted) {
        const e = await early;
        throw new QemuStartError(
          opts.vm,
          (await stderrReason(stderrPath)) || `exit code ${e.code}${e.signal ? `, signal ${e.signal}` : ''}`,
          { exit: e, argv },
          err,
        );
      }
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
      if (opts.signal?.aborted) throw new AbortedError(`start VM '${opts.vm}'`, opts.signal.reason);
      throw new QemuStartError(opts.vm, `${messageOf(err)}; ${await stderrReason(stderrPath)}`, { argv }, err);
    }
  }

  /** Re-attaches to a running QEMU (agent restart): pid from its pidfile, monitor from its socket. */
  static async attach(opts: SpawnOptions): Promise<QemuProcess> {
    const pid = Number((await fsp.readFile(opts.pidFile, 'utf8')).trim());
    if (!Number.isInteger(pid) || pid <= 0 || !isQemuAlive(pid)) {
      throw new FerryError(
        'E_QEMU_GONE',
        `Cannot re-attach to VM '${opts.vm}': its QEMU (pid file ${opts.pidFile}) is not running`,
        { context: { vm: opts.vm, pid } },
      );
    }
    const qmp = await QmpClient.connect(opts.qmpSocket, {
      vm: opts.vm,
      signal: opts.signal,
      timeoutMs: opts.timeoutMs ?? 10_000,
    });
    const exited = (async (): Promise<ExitInfo> => {
      // Not our child: poll until the pid is gone (the closed monitor is the usual first sign).
      await qmp.closed;
      while (isQemuAlive(pid)) await sleep(100);
      return { code: null, signal: null };
    })();
    return new QemuProcess(opts.vm, pid, qmp, path.join(opts.runDir, 'qemu.stderr.log'), exited);
  }

  /** QMP quit (flushes disks), then SIGKILL if it has not gone within `timeoutMs`. */
  async quit(opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<ExitInfo> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    if (!this.hasExited) {
      try {
        await this.qmp.execute('quit', undefined, { timeoutMs, signal: opts.signal });
      } catch {
        /* closed while quitting is success */
      }
    }
    return this.waitExit(timeoutMs, opts.signal).catch(() => this.kill());
  }

  /** SIGKILL and wait for the process to be gone. */
  async kill(): Promise<ExitInfo> {
    if (!this.hasExited) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    this.qmp.close();
    return this.awaitGone();
  }

  /**
   * The exit, also when nothing else keeps the event loop alive: the child is unref'd (it
   * must outlive the agent), so its 'exit' event alone cannot hold a waiter open.
   */
  private awaitGone(): Promise<ExitInfo> {
    if (this.exitInfo) return Promise.resolve(this.exitInfo);
    // One watcher per process, and it polls only once the monitor closed (QEMU exits, or we
    // let go of it): a running VM costs its agent nothing (issue 17: an idle agent polled
    // /proc 40 times a second per VM). The open monitor socket keeps the event loop alive.
    this.gone ??= Promise.race([
      this.childExit,
      (async (): Promise<ExitInfo> => {
        await this.qmp.closed;
        while (isQemuAlive(this.pid)) await sleep(50);
        return this.exitInfo ?? { code: null, signal: null };
      })(),
    ]);
    return this.gone;
  }

  /** Waits for the process to exit on its own (guest power-off). */
  waitExit(timeoutMs: number, signal?: AbortSignal): Promise<ExitInfo> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        reject(new FerryError('E_TIMEOUT', `VM '${this.vm}' did not exit within ${timeoutMs} ms`));
      }, timeoutMs);
      const onAbort = (): void => {
        clearTimeout(t);
        reject(new AbortedError(`wait for VM '${this.vm}' to exit`));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      void this.awaitGone().then((e) => {
        clearTimeout(t);
        signal?.removeEventListener('abort', onAbort);
        resolve(e);
      });
    });
  }

  /** QEMU's stderr (its own reason for failures). */
  stderrText(): Promise<string> {
    return stderrReason(this.stderrPath);
  }
}

/** setpriv's prefix when QEMU runs as its own user (an agent that is root), else nothing. */
function runAsArgs(): string[] {
  const u = qemuUser();
  return u && process.getuid?.() === 0 ? dropPrivilegesArgs(u) : [];
}

/**
 * QEMUs whose command line names a file in `runDir` (its pid file, QMP socket): also one an
 * agent killed during the spawn started but never recorded, which no pid file may name yet.
 */
export function qemusOfRunDir(runDir: string): number[] {
  const dir = path.resolve(runDir) + '/';
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const args = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (args.some((a) => a.includes('qemu-system')) && args.some((a) => a.includes(dir)) && isQemuAlive(Number(e)))
        out.push(Number(e));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** SIGKILLs each pid that is still a QEMU and waits (up to 5 s) until they are gone. */
export async function killQemus(pids: readonly number[]): Promise<void> {
  for (const pid of pids) {
    try {
      if (isQemuAlive(pid)) process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (let k = 0; k < 50 && pids.some((p) => isQemuAlive(p)); k++) await sleep(100);
}

export function isQemuAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (!cmd.includes('qemu-system')) return false;
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(stat); // a zombie is gone for our purposes
  } catch {
    return false;
  }
}

async function stderrReason(p: string): Promise<string> {
  try {
    const text = await fsp.readFile(p, 'utf8');
    // Drop the -msg timestamp prefix; keep QEMU's last few lines.
    return text
      .trim()
      .split('\n')
      .filter(Boolean)
      .slice(-4)
      .map((l) => l.replace(/^\S+T\S+ /, '').replace(/^qemu-system-x86_64: /, ''))
      .join(' / ');
  } catch {
    return '';
  }
}
