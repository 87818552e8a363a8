// What this host can do: CPU, accelerator, QEMU version and machine types, memory.
import fsp from 'node:fs/promises';
import os from 'node:os';
import { run } from '../util/exec.js';
import { QEMU_BINARY } from '../qemu/process.js';

export interface CpuInfo {
  vendor: string;
  model: string;
  flags: string[];
  count: number;
}

export async function cpuInfo(): Promise<CpuInfo> {
  const text = await fsp.readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const first = text.split('\n\n')[0] ?? '';
  const field = (k: string): string => new RegExp(`^${k}\\s*:\\s*(.*)$`, 'm').exec(first)?.[1]?.trim() ?? '';
  return {
    vendor: field('vendor_id') || 'unknown',
    model: field('model name') || 'unknown',
    flags: field('flags').split(/\s+/).filter(Boolean),
    count: os.cpus().length,
  };
}

export async function memoryInfo(): Promise<{ totalBytes: number; freeBytes: number }> {
  const text = await fsp.readFile('/proc/meminfo', 'utf8').catch(() => '');
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s*(\\d+)`, 'm').exec(text)?.[1] ?? 0) * 1024;
  return { totalBytes: kb('MemTotal') || os.totalmem(), freeBytes: kb('MemAvailable') || os.freemem() };
}

let qemuCache: Promise<{ version: string; machineTypes: string[] }> | null = null;

/** QEMU's version and machine types (asked once per agent). */
export function qemuInfo(): Promise<{ version: string; machineTypes: string[] }> {
  qemuCache ??= (async () => {
    const v = await run(QEMU_BINARY, ['--version'], { timeoutMs: 10_000 });
    const version = /version (\S+)/.exec(v.stdout)?.[1] ?? 'unknown';
    const m = await run(QEMU_BINARY, ['-machine', 'help'], { timeoutMs: 10_000 });
    const machineTypes = m.stdout
      .split('\n')
      .slice(1)
      .map((l) => l.trim().split(/\s+/)[0] ?? '')
      .filter((x) => /^(pc|q35|pc-)/.test(x));
    return { version, machineTypes };
  })();
  qemuCache.catch(() => {
    qemuCache = null;
  });
  return qemuCache;
}
