// Accelerator probe: KVM only if it really runs a guest to a serial marker within a
// deadline (a /dev/kvm that exists can still hang every guest, as on our CI machines);
// otherwise TCG. The answer is cached per host boot.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { sleep } from '../util/exec.js';
import { QEMU_BINARY } from './process.js';
import { ensureSandbox, SANDBOX_ARGS } from './sandbox.js';
import { writeBootblockImage } from '../../guest/bootblock.js';
import { probeGuestFiles } from '../../guest/paths.js';

export type Accelerator = 'kvm' | 'tcg';

export interface AccelProbe {
  accel: Accelerator;
  reason: string;
  probedAt: string;
  bootId: string;
  cached: boolean;
}

const CACHE_DIR =
  process.env.FERRY_RUN_DIR ??
  (fs.existsSync('/run') && process.getuid?.() === 0 ? '/run/ferry' : path.join(os.tmpdir(), 'ferry-run'));
const CACHE_FILE = path.join(CACHE_DIR, 'accel.json');

function bootId(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

/** The accelerator to use on this host. FERRY_ACCEL=kvm|tcg overrides the probe. */
export async function detectAccelerator(
  opts: { signal?: AbortSignal; timeoutMs?: number; fresh?: boolean } = {},
): Promise<AccelProbe> {
  const forced = process.env.FERRY_ACCEL;
  const id = bootId();
  if (forced === 'kvm' || forced === 'tcg')
    return { accel: forced, reason: 'FERRY_ACCEL', probedAt: new Date().toISOString(), bootId: id, cached: false };
  if (!opts.fresh) {
    try {
      // The file may be from an older Ferry or hand-edited: its accelerator is checked.
      const c = JSON.parse(await fsp.readFile(CACHE_FILE, 'utf8')) as Omit<AccelProbe, 'accel'> & { accel: unknown };
      if (c.bootId === id && (c.accel === 'kvm' || c.accel === 'tcg')) return { ...c, accel: c.accel, cached: true };
    } catch {
      /* no cache yet */
    }
  }
  const r = await probeKvm(opts);
  const result: AccelProbe = {
    accel: r.ok ? 'kvm' : 'tcg',
    reason: r.reason,
    probedAt: new Date().toISOString(),
    bootId: id,
    cached: false,
  };
  await fsp.mkdir(CACHE_DIR, { recursive: true });
  await fsp.writeFile(CACHE_FILE + '.tmp', JSON.stringify(result));
  await fsp.rename(CACHE_FILE + '.tmp', CACHE_FILE);
  return result;
}

/**
 * Boots a guest under KVM and waits for its marker: the Linux probe guest when it is
 * built (it proves a real kernel runs), else the bootblock (its 'B' proves 256 sweeps).
 */
async function probeKvm(opts: { signal?: AbortSignal; timeoutMs?: number }): Promise<{ ok: boolean; reason: string }> {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return { ok: false, reason: '/dev/kvm is missing or not accessible' };
  }
  await ensureSandbox({ signal: opts.signal });
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-accel-'));
  const serial = path.join(dir, 'serial.log');
  const guest = probeGuestFiles();
  let args: string[];
  let marker: string;
  if (guest) {
    args = [
      '-m',
      '256M',
      '-kernel',
      guest.kernel,
      '-initrd',
      guest.initrd,
      '-append',
      'console=ttyS0 quiet ferry.mode=accel',
    ];
    marker = 'ferry-accel-ok';
  } else {
    const img = path.join(dir, 'bootblock.img');
    await writeBootblockImage(img);
    args = ['-m', '128M', '-drive', `file=${img},format=raw,if=ide`];
    marker = 'AB';
  }
  const child = spawn(
    QEMU_BINARY,
    [
      '-nodefaults',
      '-no-user-config',
      ...SANDBOX_ARGS,
      '-display',
      'none',
      '-machine',
      'pc-i440fx-7.2',
      '-accel',
      'kvm',
      '-cpu',
      'qemu64',
      '-no-reboot',
      '-serial',
      `file:${serial}`,
      ...args,
    ],
    { stdio: 'ignore' },
  );
  // Set once the 'exit' event has been emitted (a flag set in a listener would read as
  // always false to TypeScript's narrowing).
  const exited = (): boolean => child.exitCode !== null || child.signalCode !== null;
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const until = Date.now() + timeoutMs;
  try {
    while (Date.now() < until && !opts.signal?.aborted) {
      const wasExited = exited();
      const out = await fsp.readFile(serial, 'utf8').catch(() => '');
      if (out.includes(marker))
        return { ok: true, reason: `KVM ran the ${guest ? 'Linux probe' : 'bootblock'} guest to its marker` };
      if (wasExited) return { ok: false, reason: 'QEMU with -accel kvm exited before the guest ran' };
      await sleep(100);
    }
    return {
      ok: false,
      reason:
        `KVM did not run the ${guest ? 'Linux probe' : 'bootblock'} guest ` +
        `to its serial marker within ${timeoutMs} ms`,
    };
  } finally {
    if (!exited()) {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    await fsp.rm(dir, { recursive: true, force: true });
  }
}
