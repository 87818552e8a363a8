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

/** The first processor's vendor, model and flags, and how many processors /proc/cpuinfo lists. */
export function parseCpuInfo(text: string): CpuInfo {
  const first = text.split('\n\n')[0] ?? '';
  const field = (k: string): string => new RegExp(`^${k}\\s*:\\s*(.*)$`, 'm').exec(first)?.[1]?.trim() ?? '';
  const listed = text.match(/^processor\s*:/gm)?.length ?? 0;
  return {
    vendor: field('vendor_id') || 'unknown',
    model: field('model name') || 'unknown',
    flags: field('flags').split(/\s+/).filter(Boolean),
    count: listed || os.cpus().length,
  };
}

/**
 * How long a reading of /proc/cpuinfo is used. Every compare and pre-flight asks for the host's
 * view; the processor changes only with a hot-plug or a late microcode update, and reading it
 * (with os.cpus(), which also reads each processor's frequency) cost ~2 ms of a move's CPU.
 */
export const CPU_INFO_TTL_MS = 60_000;
interface CpuReading {
  at: number;
  info: Promise<CpuInfo>;
}
let cpuCache: CpuReading | null = null;

/**
 * This host's processor (read at most once per CPU_INFO_TTL_MS); a copy the caller may change.
 * `read` is /proc/cpuinfo's text (a test gives its own).
 */
export async function cpuInfo(
  now = Date.now(),
  read: () => Promise<string> = () => fsp.readFile('/proc/cpuinfo', 'utf8'),
): Promise<CpuInfo> {
  if (!cpuCache || now - cpuCache.at >= CPU_INFO_TTL_MS || now < cpuCache.at) {
    const entry: CpuReading = {
      at: now,
      // A failed read is answered (no flags, vendor unknown) but not kept: the next call reads again.
      info: read().then(parseCpuInfo, () => {
        if (cpuCache === entry) cpuCache = null;
        return parseCpuInfo('');
      }),
    };
    cpuCache = entry;
  }
  const info = await cpuCache.info;
  return { ...info, flags: [...info.flags] };
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
