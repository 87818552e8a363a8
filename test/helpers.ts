// Shared test helpers: temp folders that are always removed, serial-log polling, the
// accelerator every integration test uses.
import assert from 'node:assert/strict';
import type { PoolDef } from '../src/storage/pools.js';
import type { FerryError } from '../src/errors.js';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { detectAccelerator, type Accelerator } from '../src/qemu/accel.js';
import { sleep } from '../src/util/exec.js';

/** A temp folder removed when the test ends, pass or fail. */
export async function tempDir(t: TestContext, prefix = 'ferry-test-'): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * A temp folder to hold a lab: mkdtemp makes it 0700, and the lab's QEMUs (ferry-qemu) must
 * pass through it (0711: enter, not list). The caller removes it.
 */
export async function labTempDir(prefix: string): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  await fsp.chmod(dir, 0o711);
  labDirs.add(dir);
  downOnSignal();
  return dir;
}

/**
 * The labs made in this process, brought down when the process is told to stop (a runner's
 * timeout, ^C): no after() hook runs then, and a lab's agents, etcd members and QEMUs run
 * detached, so they would outlive the test and load every run after it (one such lab, left by a
 * `timeout 60` run, failed three fence tests of a later full suite at load 11).
 */
const labDirs = new Set<string>();
let signalsHooked = false;
function downOnSignal(): void {
  if (signalsHooked) return;
  signalsHooked = true;
  const ferryBin = fileURLToPath(new URL('../bin/ferry', import.meta.url));
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const)
    process.once(sig, () => {
      for (const dir of labDirs) {
        let subs: string[];
        try {
          subs = fs.readdirSync(dir);
        } catch {
          continue; // removed by its test
        }
        // `lab down` of a folder that holds no lab fails at once and changes nothing.
        for (const sub of subs)
          spawnSync(ferryBin, ['lab', 'down', '--dir', path.join(dir, sub)], { stdio: 'ignore', timeout: 60_000 });
        fs.rmSync(dir, { recursive: true, force: true });
      }
      process.exit(128 + os.constants.signals[sig]);
    });
}

let accel: Promise<Accelerator> | null = null;
export function testAccel(): Promise<Accelerator> {
  accel ??= detectAccelerator().then((r) => r.accel);
  return accel;
}

/** Polls a file until `pred(text)` is true; throws with the file's tail on timeout. */
export async function waitForFile(
  file: string,
  pred: (text: string) => boolean,
  opts: { timeoutMs?: number; what?: string } = {},
): Promise<string> {
  const until = Date.now() + (opts.timeoutMs ?? 60_000);
  let text = '';
  while (Date.now() < until) {
    text = await fsp.readFile(file, 'utf8').catch(() => '');
    if (pred(text)) return text;
    await sleep(100);
  }
  throw new Error(
    `timed out waiting for ${opts.what ?? 'a condition'} in ${file}; ` +
      `last lines:\n${text.split('\n').slice(-10).join('\n')}`,
  );
}

export function count(text: string, re: RegExp): number {
  return (text.match(new RegExp(re.source, re.flags.includes('g') ? re.flags : re.flags + 'g')) ?? []).length;
}

/** A local pool at `dir`, and the guest cache a probe guest boots from: what startVm and removeVm check paths in. */
export function testPools(dir: string): PoolDef[] {
  return [
    { name: 'test', kind: 'local', path: dir },
    { name: 'guests', kind: 'local', path: path.resolve('.cache/guests') },
  ];
}

/** For assert.throws/rejects: a FerryError with this code and a message matching `re`. */
export function refusedWith(code: string, re: RegExp): (e: FerryError) => true {
  return (e) => {
    assert.equal(e.code, code);
    assert.match(e.message, re);
    return true;
  };
}
