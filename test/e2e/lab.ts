// A lab for one e2e test file: up before, down and removed after, whatever happens.
import fsp from 'node:fs/promises';
import fs from 'node:fs';
import path from 'node:path';
import { before, after } from 'node:test';
import { ferry, ferryOk } from './cli.js';
import type { LabStatus } from '../../src/lab/lab.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { parseSerial } from '../../guest/records.js';
import { sleep } from '../../src/util/exec.js';
import { labTempDir } from '../helpers.js';

export interface TestLab {
  dir: string;
  lab: string;
  status: LabStatus;
}

export function useLab(hosts = 2): TestLab {
  const l: TestLab = { dir: '', lab: '', status: { dir: '', hosts: [], etcd: [] } };
  before(async () => {
    l.dir = await labTempDir('ferry-e2e-');
    l.lab = path.join(l.dir, 'lab');
    l.status = await ferryOk<LabStatus>(['lab', 'up', '--dir', l.lab, '--hosts', String(hosts), '--json']);
  });
  after(async () => {
    await ferry(['lab', 'down', '--dir', l.lab]);
    await fsp.rm(l.dir, { recursive: true, force: true });
  });
  return l;
}

export function hostData(l: TestLab, host: string): string {
  return path.join(l.lab, 'hosts', host, 'data');
}

/** The serial log of a VM on a host (each host keeps its own). */
export function serialLog(l: TestLab, host: string, vmId: string): string {
  return path.join(hostData(l, host), 'run', vmId, 'serial.log');
}

export async function readLogs(l: TestLab, vmId: string): Promise<string[]> {
  const out: string[] = [];
  for (const h of l.status.hosts) {
    const f = serialLog(l, h.name, vmId);
    if (fs.existsSync(f)) out.push(await fsp.readFile(f, 'utf8'));
  }
  return out;
}

/** Waits until a probe VM has printed `n` heartbeats and acks on its current host. */
export async function waitProbe(l: TestLab, vm: VmView, n = 20, timeoutMs = 60_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const text = await fsp.readFile(serialLog(l, vm.host, vm.id), 'utf8').catch(() => '');
    const s = parseSerial(text);
    if (s.heartbeats.length >= n && s.acks.length >= Math.min(n, 10)) return;
    await sleep(200);
  }
  throw new Error(`probe VM ${vm.name} printed fewer than ${n} heartbeats in ${timeoutMs} ms`);
}

/** Every heartbeat seq from the first to the last, across all hosts' logs: none lost, none repeated out of order. */
export function heartbeatContinuity(logs: string[]): { first: number; last: number; missing: number[]; total: number } {
  const seqs = new Set<number>();
  for (const t of logs) for (const h of parseSerial(t).heartbeats) seqs.add(h.seq);
  const sorted = [...seqs].sort((a, b) => a - b);
  const first = sorted[0] ?? 0;
  const last = sorted.at(-1) ?? 0;
  const missing: number[] = [];
  for (let s = first; s <= last && missing.length < 50; s++) if (!seqs.has(s)) missing.push(s);
  return { first, last, missing, total: sorted.length };
}

/** Polls a migration record until it reaches one of `states`. */
export async function waitMigration(
  l: TestLab,
  id: string,
  states: string[],
  timeoutMs = 90_000,
): Promise<MigrationRecord> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const r = await ferry(['migration', 'show', id, '--json'], { lab: l.lab });
    if (r.code === 0) {
      const rec = JSON.parse(r.stdout) as MigrationRecord;
      if (states.includes(rec.state)) return rec;
    }
    if (Date.now() > until) throw new Error(`migration ${id} did not reach ${states.join('/')}`);
    await sleep(150);
  }
}
