// CPU models this host's QEMU can give a guest under an accelerator (QMP
// query-cpu-definitions on a board-less QEMU), and the baseline model a set of hosts
// share (Hyper-V's processor compatibility mode, `--cpu compat`).
//
// Under TCG (QEMU 7.2, checked here) the usable named x86 models are the older ones:
// qemu64, kvm64, Conroe, Penryn, Nehalem, Westmere, Opteron_G1, Opteron_G2 (plus 486,
// pentium*, core*, athlon, n270, qemu32, kvm32, base, max). Newer models lack features TCG
// does not emulate (SandyBridge: x2apic, tsc-deadline; Skylake-Server: avx512*, pcid, ...);
// `host` is unusable (it needs kvm).
import { spawn } from 'node:child_process';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AbortedError, FerryError, asError, messageOf } from '../errors.js';
import { QEMU_BINARY } from './process.js';
import { ensureSandbox, SANDBOX_ARGS } from './sandbox.js';
import { QmpClient } from './qmp.js';

export interface CpuModelInfo {
  name: string;
  /** Features the model needs that this host/accelerator cannot provide; empty = usable. */
  unavailableFeatures: string[];
  migrationSafe: boolean;
  /** For an alias such as 'Nehalem', the versioned model it stands for ('Nehalem-v1'). */
  aliasOf?: string;
}

const DEFAULT_TIMEOUT_MS = 20_000;

interface CacheEntry {
  promise: Promise<CpuModelInfo[]>;
  controller: AbortController;
  waiters: number;
}
const cache = new Map<'kvm' | 'tcg', CacheEntry>();

/**
 * The CPU models QEMU on this host offers under `accel`, each with the features it lacks.
 * Asked once per accelerator per process (concurrent callers share one probe); a failed
 * or cancelled probe is not cached. `signal` stops this caller's wait; the probe's QEMU is
 * killed when every caller waiting for it has given up.
 */
export function usableCpuModels(
  accel: 'kvm' | 'tcg',
  opts: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<CpuModelInfo[]> {
  // A JavaScript caller or a cast can pass anything: checked at run time.
  const given: unknown = accel;
  if (given !== 'kvm' && given !== 'tcg') {
    return Promise.reject(
      new FerryError(
        'E_INVALID_INPUT',
        `Cannot list CPU models for accelerator '${String(given)}': unknown accelerator; use 'kvm' or 'tcg'`,
        {},
      ),
    );
  }
  const what = `list the CPU models of QEMU under ${accel}`;
  if (opts.signal?.aborted) return Promise.reject(new AbortedError(what, opts.signal.reason));
  let entry = cache.get(accel);
  if (!entry) {
    const controller = new AbortController();
    const promise = probeAgainIfSilent(accel, controller.signal, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const e: CacheEntry = { promise, controller, waiters: 0 };
    cache.set(accel, e);
    promise.catch(() => {
      if (cache.get(accel) === e) cache.delete(accel);
    });
    entry = e;
  }
  const e = entry;
  const signal = opts.signal;
  e.waiters++;
  return new Promise<CpuModelInfo[]>((resolve, reject) => {
    let done = false;
    const leave = (): boolean => {
      if (done) return false;
      done = true;
      e.waiters--;
      signal?.removeEventListener('abort', onAbort);
      return true;
    };
    const onAbort = (): void => {
      if (!leave()) return;
      if (e.waiters === 0) {
        // Nobody waits any more: stop the probe and let the next caller start afresh.
        if (cache.get(accel) === e) cache.delete(accel);
        e.controller.abort(signal?.reason);
      }
      reject(new AbortedError(what, signal?.reason));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    e.promise.then(
      (v) => {
        if (leave()) resolve(copyModels(v));
      },
      (err: unknown) => {
        if (leave()) reject(asError(err));
      },
    );
  });
}

/** Forgets cached answers (tests; after a QEMU upgrade). */
export function clearCpuModelCache(): void {
  cache.clear();
}

/** Names of the models with no unavailable feature. */
export function usableModelNames(models: readonly CpuModelInfo[]): string[] {
  return models.filter((m) => m.unavailableFeatures.length === 0).map((m) => m.name);
}

function copyModels(v: CpuModelInfo[]): CpuModelInfo[] {
  return v.map((m) => ({ ...m, unavailableFeatures: [...m.unavailableFeatures] }));
}

/**
 * A probe whose QEMU stayed silent (no answer before the deadline) is tried once more with a new
 * QEMU: seen once in CI on a loaded machine, a QEMU answered the QMP greeting and then not
 * `qmp_capabilities` for 20 s, and the move that asked failed. A QEMU that exits is not retried.
 */
async function probeAgainIfSilent(
  accel: 'kvm' | 'tcg',
  signal: AbortSignal,
  timeoutMs: number,
): Promise<CpuModelInfo[]> {
  try {
    return await probeCpuModels(accel, signal, timeoutMs);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (signal.aborted || (code !== 'E_TIMEOUT' && code !== 'E_ABORTED')) throw err;
    return probeCpuModels(accel, signal, timeoutMs);
  }
}

async function probeCpuModels(accel: 'kvm' | 'tcg', signal: AbortSignal, timeoutMs: number): Promise<CpuModelInfo[]> {
  const what = `list the CPU models of QEMU under ${accel}`;
  await ensureSandbox({ signal });
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-cpu-models-'));
  const sock = path.join(dir, 'q.sock');
  const argv = [
    '-nodefaults',
    '-no-user-config',
    ...SANDBOX_ARGS,
    '-display',
    'none',
    '-machine',
    'none',
    '-accel',
    accel,
    '-qmp',
    `unix:${sock},server=on,wait=off`,
  ];
  let stderr = '';
  // In an object: a plain `let` flag set by the listeners would read as always false to
  // TypeScript's narrowing.
  const status = { exited: false };
  const child = spawn(QEMU_BINARY, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>((resolve) => {
    child.once('exit', (code, sig) => {
      status.exited = true;
      resolve({ code, signal: sig });
    });
    child.once('error', (error) => {
      status.exited = true;
      resolve({ code: null, signal: null, error });
    });
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s: string) => {
    if (stderr.length < 8192) stderr += s;
  });
  // Stop connecting when QEMU dies at start (e.g. -accel kvm without /dev/kvm), on abort, or at the deadline.
  const early = new AbortController();
  void exit.then(() => early.abort(new Error('QEMU exited')));
  const sig = AbortSignal.any([signal, early.signal, AbortSignal.timeout(timeoutMs)]);
  let qmp: QmpClient | null = null;
  try {
    try {
      qmp = await QmpClient.connect(sock, { vm: `cpu-models-${accel}`, signal: sig, timeoutMs });
      const raw = await qmp.executeRaw('query-cpu-definitions', undefined, { signal: sig, timeoutMs });
      return parseDefinitions(raw, accel);
    } catch (err) {
      if (signal.aborted) throw new AbortedError(what, signal.reason);
      if (status.exited || early.signal.aborted) {
        const e = await exit;
        const reason =
          stderr
            .trim()
            .split('\n')
            .filter(Boolean)
            .slice(-3)
            .map((l) => l.replace(/^qemu-system-\S+: /, ''))
            .join(' / ') ||
          (e.error ? messageOf(e.error) : `exit code ${e.code}${e.signal ? `, signal ${e.signal}` : ''}`);
        throw new FerryError(
          'E_CPU_MODELS',
          `Cannot ${what}: QEMU exited at start-up: ${reason}; ` +
            (accel === 'kvm' ? "check /dev/kvm, or use 'tcg'" : 'check the QEMU installation (scripts/setup)'),
          {
            context: { accel, argv, stderr },
            cause: err,
          },
        );
      }
      if (err instanceof FerryError) throw err;
      throw new FerryError(
        'E_CPU_MODELS',
        `Cannot ${what}: ${messageOf(err)}; check the QEMU installation (scripts/setup)`,
        { context: { accel }, cause: err },
      );
    }
  } finally {
    qmp?.close();
    if (!status.exited) {
      child.kill('SIGKILL');
      await exit;
    }
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

function parseDefinitions(raw: unknown, accel: string): CpuModelInfo[] {
  if (!Array.isArray(raw)) {
    throw new FerryError(
      'E_CPU_MODELS',
      `Cannot list the CPU models of QEMU under ${accel}: ` +
        `query-cpu-definitions returned ${typeof raw}, not a list; check the QEMU version`,
    );
  }
  const out: CpuModelInfo[] = [];
  for (const d of raw as Array<Record<string, unknown> | null | undefined>) {
    if (!d || typeof d.name !== 'string') continue;
    const unavailable = Array.isArray(d['unavailable-features'])
      ? (d['unavailable-features'] as unknown[]).filter((f): f is string => typeof f === 'string')
      : [];
    const m: CpuModelInfo = {
      name: d.name,
      unavailableFeatures: unavailable,
      migrationSafe: d['migration-safe'] === true,
    };
    if (typeof d['alias-of'] === 'string') m.aliasOf = d['alias-of'];
    out.push(m);
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * Named x86 models, newest first: Intel and AMD server/client generations QEMU 7.2 knows.
 * The noTSX variants follow their TSX model (hosts whose microcode turned TSX off).
 */
export const CPU_BASELINE_PREFERENCE: string[] = [
  'EPYC-Milan',
  'Icelake-Server',
  'Icelake-Server-noTSX',
  'Cooperlake',
  'EPYC-Rome',
  'Cascadelake-Server',
  'Cascadelake-Server-noTSX',
  'EPYC',
  'Skylake-Server',
  'Skylake-Server-noTSX-IBRS',
  'Skylake-Client',
  'Skylake-Client-noTSX-IBRS',
  'Broadwell',
  'Broadwell-noTSX',
  'Haswell',
  'Haswell-noTSX',
  'Opteron_G5',
  'IvyBridge',
  'Opteron_G4',
  'SandyBridge',
  'Westmere',
  'Opteron_G3',
  'Nehalem',
  'Penryn',
  'Opteron_G2',
  'Conroe',
  'Opteron_G1',
  'qemu64',
];

/**
 * The newest model in CPU_BASELINE_PREFERENCE usable on every host. `perHost` holds, for
 * each host, the names of its usable models (no unavailable feature; see usableModelNames).
 * 'qemu64' when no preferred model is common (or no host is given).
 */
export function chooseBaseline(perHost: string[][]): string {
  if (perHost.length === 0) return 'qemu64';
  const sets = perHost.map((names) => new Set(names));
  return CPU_BASELINE_PREFERENCE.find((m) => sets.every((s) => s.has(m))) ?? 'qemu64';
}
