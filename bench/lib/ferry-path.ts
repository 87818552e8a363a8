// The Ferry side of the benchmark: a 2-host lab driven only through bin/ferry, as a user would.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { REPO_ROOT } from '../../guest/paths.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import type { VmView } from '../../src/api/schemas.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  wallMs: number;
  startEpoch: number;
  endEpoch: number;
}

export function ferry(args: string[], opts: { lab?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const startEpoch = Date.now();
    const t0 = performance.now();
    execFile(
      path.join(REPO_ROOT, 'bin', 'ferry'),
      args,
      {
        timeout: opts.timeoutMs ?? 120_000,
        killSignal: 'SIGKILL',
        maxBuffer: 32 * 1024 * 1024,
        env: { ...process.env, ...(opts.lab ? { FERRY_LAB: opts.lab } : {}) },
      },
      (err, stdout, stderr) => {
        const wallMs = performance.now() - t0;
        const e = err as (NodeJS.ErrnoException & { killed?: boolean }) | null;
        const code = e ? (typeof e.code === 'number' ? e.code : e.killed ? 124 : 1) : 0;
        resolve({
          code,
          stdout,
          stderr: e?.killed ? `${stderr}\n(killed after ${opts.timeoutMs ?? 120_000} ms)` : stderr,
          wallMs,
          startEpoch,
          endEpoch: Date.now(),
        });
      },
    );
  });
}

export async function ferryOk<T = unknown>(
  args: string[],
  opts: { lab?: string; timeoutMs?: number } = {},
): Promise<T> {
  const r = await ferry(args, opts);
  if (r.code !== 0)
    throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 600)}`);
  return (args.includes('--json') ? JSON.parse(r.stdout) : r.stdout) as T;
}

/** Where the time of one `move-vm` went, from the record's event log and the CLI's clock. */
export interface FerryPhases {
  /** CLI start → job created: node/tsx start-up, locate the VM, the first pre-flight check. */
  cliAndPreflightMs: number;
  /** job created → preparing: the second pre-flight check (run() compares again). */
  recheckMs: number;
  /** preparing → copying memory: the destination starts QEMU (-incoming), caps, TLS objects. */
  prepareMs: number;
  /** copying memory → switching over: QEMU's pre-copy. */
  copyMs: number;
  /** switching over → completed: migrate-continue, completion, confirm (dest cont), source quit. */
  switchoverMs: number;
  /** completed → CLI exit: the CLI receiving the last event, printing, process exit. */
  tailMs: number;
}

export function phasesOf(rec: MigrationRecord, cli: CliResult): FerryPhases | null {
  const at = (re: RegExp): number | null => {
    const e = rec.events.find((x) => re.test(x.message));
    return e ? Date.parse(e.at) : null;
  };
  const created = Date.parse(rec.createdAt);
  const preparing = at(/^preparing /);
  const copying = at(/^copying memory/);
  const switching = at(/^switching over/);
  const done = rec.finishedAt ? Date.parse(rec.finishedAt) : null;
  if (preparing === null || copying === null || switching === null || done === null) return null;
  return {
    cliAndPreflightMs: created - cli.startEpoch,
    recheckMs: preparing - created,
    prepareMs: copying - preparing,
    copyMs: switching - copying,
    switchoverMs: done - switching,
    tailMs: cli.endEpoch - done,
  };
}

/** Each step's time from the record, keyed `source:NAME` / `destination:NAME` (a step run twice: summed). */
export function stepsOf(rec: MigrationRecord): Record<string, number> | null {
  if (!rec.steps?.length) return null;
  const out: Record<string, number> = {};
  for (const s of [...rec.steps].sort((a, b) => a.atMs - b.atMs)) {
    const k = `${s.on}:${s.name}`;
    out[k] = (out[k] ?? 0) + s.ms;
  }
  return out;
}

export class FerryLab {
  readonly lab: string;
  constructor(readonly dir: string) {
    this.lab = path.join(dir, 'lab');
  }

  get shared(): string {
    return path.join(this.lab, 'shared');
  }

  serialLog(host: string, vmId: string): string {
    return path.join(this.lab, 'hosts', host, 'data', 'run', vmId, 'serial.log');
  }

  async up(): Promise<void> {
    await ferryOk(['lab', 'up', '--dir', this.lab, '--hosts', '2', '--json'], { timeoutMs: 120_000 });
  }

  async down(): Promise<string> {
    const r = await ferry(['lab', 'down', '--dir', this.lab], { timeoutMs: 60_000 });
    return r.code === 0 ? r.stdout.trim() : `lab down exited ${r.code}: ${r.stderr.trim()}`;
  }

  async setTls(on: boolean): Promise<void> {
    for (const h of ['host-a', 'host-b'])
      await ferryOk(['host', 'set', h, '--tls', on ? 'on' : 'off', '--json'], { lab: this.lab });
  }

  async newProbe(name: string, dirty: string | null, memoryMiB?: number): Promise<VmView> {
    return ferryOk<VmView>(
      [
        'vm',
        'new',
        name,
        '--host',
        'host-a',
        '--guest',
        'probe',
        '--path',
        path.join(this.shared, name),
        '--start',
        ...(dirty ? ['--probe-dirty', dirty] : []),
        ...(memoryMiB ? ['--memory', `${memoryMiB}M`] : []),
        '--json',
      ],
      { lab: this.lab, timeoutMs: 180_000 },
    );
  }

  show(name: string): Promise<VmView> {
    return ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: this.lab });
  }
  pause(name: string): Promise<VmView> {
    return ferryOk<VmView>(['vm', 'pause', name, '--json'], { lab: this.lab });
  }
  resume(name: string): Promise<VmView> {
    return ferryOk<VmView>(['vm', 'resume', name, '--json'], { lab: this.lab });
  }

  /** Stops a VM at once and starts it again where it is (a guest that died in a move). */
  async restart(name: string): Promise<void> {
    await ferry(['vm', 'stop', name, '--force'], { lab: this.lab, timeoutMs: 60_000 });
    await ferryOk(['vm', 'start', name, '--json'], { lab: this.lab, timeoutMs: 120_000 });
  }

  async remove(name: string): Promise<void> {
    await ferry(['vm', 'stop', name, '--force'], { lab: this.lab, timeoutMs: 60_000 });
    await ferry(['vm', 'rm', name], { lab: this.lab, timeoutMs: 60_000 });
  }

  /** `move-vm NAME --to HOST [EXTRA…] --json`: the record (also when the move failed) and the CLI timing. */
  async move(
    name: string,
    to: string,
    extra: string[] = [],
  ): Promise<{ cli: CliResult; record: MigrationRecord | null; error: string | null }> {
    const cli = await ferry(['move-vm', name, '--to', to, ...extra, '--json'], { lab: this.lab, timeoutMs: 180_000 });
    let record: MigrationRecord | null = null;
    try {
      record = JSON.parse(cli.stdout) as MigrationRecord;
    } catch {
      /* no JSON: the error is on stderr */
    }
    if (record && !('state' in record)) record = null;
    let error: string | null = null;
    if (cli.code !== 0 || !record || record.state !== 'completed') {
      error = record?.error
        ? `${record.error.code}: ${record.error.message}`
        : `exit ${cli.code}: ${(cli.stderr || cli.stdout).trim().split('\n').slice(-3).join(' / ').slice(0, 600)}`;
    }
    return { cli, record, error };
  }
}
