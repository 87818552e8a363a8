// Helpers for bench/storage.ts: run a command with a timeout, run bin/ferry against a lab,
// image facts, the machine's load, and phase times from a migration record's events.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type { MigrationRecord } from '../../src/migration/schemas.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const MiB = 1024 * 1024;

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

/** Runs a program (no shell); never throws; kills it after `timeoutMs`. */
export function run(
  cmd: string,
  args: string[],
  opts: { timeoutMs: number; env?: NodeJS.ProcessEnv },
): Promise<RunResult> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs, killSignal: 'SIGKILL', maxBuffer: 64 * MiB, env: { ...process.env, ...opts.env } },
      (err, stdout, stderr) => {
        const ms = performance.now() - t0;
        const e = err as (NodeJS.ErrnoException & { killed?: boolean; code?: number | string }) | null;
        const timedOut = Boolean(e?.killed);
        const code = e ? (typeof e.code === 'number' ? e.code : 1) : 0;
        resolve({
          code,
          stdout,
          stderr: stderr + (timedOut ? `\n(killed after ${opts.timeoutMs} ms)` : ''),
          ms,
          timedOut,
        });
      },
    );
  });
}

/** Runs and throws with the command's own words on a non-zero exit. */
export async function runOk(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  const r = await run(cmd, args, { timeoutMs });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${oneLine(r.stderr || r.stdout)}`);
  return r;
}

export function oneLine(s: string, max = 400): string {
  const t = s.replace(/\s+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max)}…` : t;
}

export class FerryCli {
  constructor(readonly lab: string) {}

  run(args: string[], timeoutMs = 120_000): Promise<RunResult> {
    return run(path.join(REPO_ROOT, 'bin', 'ferry'), args, { timeoutMs, env: { FERRY_LAB: this.lab } });
  }

  async ok(args: string[], timeoutMs = 120_000): Promise<RunResult> {
    const r = await this.run(args, timeoutMs);
    if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${oneLine(r.stderr || r.stdout)}`);
    return r;
  }

  async json<T>(args: string[], timeoutMs = 120_000): Promise<T> {
    return JSON.parse((await this.ok([...args, '--json'], timeoutMs)).stdout) as T;
  }

  /** A move: the record (parsed even when the move failed) and the command's wall time. */
  async move(args: string[], timeoutMs: number): Promise<{ record: MigrationRecord; wallMs: number }> {
    const r = await this.run([...args, '--json'], timeoutMs);
    let record: MigrationRecord | null = null;
    try {
      record = JSON.parse(r.stdout) as MigrationRecord;
    } catch {
      /* not JSON: a usage error or a timeout */
    }
    if (!record?.id) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${oneLine(r.stderr || r.stdout)}`);
    if (record.state !== 'completed')
      throw new Error(
        `ferry ${args.join(' ')}: ${record.state}: ${record.error?.code ?? ''} ${record.error?.message ?? ''}`,
      );
    return { record, wallMs: r.ms };
  }
}

export interface ImgFacts {
  virtualBytes: number;
  actualBytes: number;
}

export async function imgFacts(file: string): Promise<ImgFacts> {
  const r = await runOk('qemu-img', ['info', '-U', '--output=json', file], 30_000);
  const j = JSON.parse(r.stdout) as { 'virtual-size': number; 'actual-size'?: number };
  return { virtualBytes: j['virtual-size'], actualBytes: j['actual-size'] ?? 0 };
}

/** Phase times (ms) from a record's event log. */
export interface Phases {
  copyMs: number | null;
  afterCopyMs: number | null;
  beforeCopyMs: number | null;
}

export function phasesOf(r: MigrationRecord): Phases {
  const at = (re: RegExp): number | null => {
    const e = r.events.find((x) => re.test(x.message));
    return e ? Date.parse(e.at) : null;
  };
  const start = at(/^copying \d+ disk\(s\)/);
  const end = at(/^every disk is mirrored|^all copies ready/);
  const first = r.startedAt ? Date.parse(r.startedAt) : r.events[0] ? Date.parse(r.events[0].at) : null;
  const last = r.finishedAt ? Date.parse(r.finishedAt) : r.events.at(-1) ? Date.parse(r.events.at(-1)!.at) : null;
  return {
    copyMs: start !== null && end !== null ? end - start : null,
    beforeCopyMs: start !== null && first !== null ? start - first : null,
    afterCopyMs: end !== null && last !== null ? last - end : null,
  };
}

/** 1-min load average and the qemu-system processes on this machine not under `mine`. */
export function machineLoad(mine: string): { load1: number; foreignQemus: number } {
  let foreign = 0;
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    let cmd: string;
    try {
      cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (cmd.startsWith('qemu-system') || cmd.includes('/qemu-system')) {
      if (!cmd.includes(mine)) foreign++;
    }
  }
  return { load1: Math.round(os.loadavg()[0]! * 100) / 100, foreignQemus: foreign };
}

/** Pids of processes whose command line mentions `dir` (what we left behind), never our own. */
export function pidsUnder(dir: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(dir)) out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

export function median(xs: number[]): number | null {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function fmt(x: number | null | undefined, digits = 1): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(digits);
}

export function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

/** On SIGINT or SIGTERM: `teardown` (lab down, leftovers), then exit 130. Returns the way to stop listening. */
export function stopOnSignals(teardown: () => Promise<void>, log: (s: string) => void): () => void {
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`${sig}: stopping`);
    void teardown().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return () => {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  };
}
