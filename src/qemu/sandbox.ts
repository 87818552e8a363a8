// QEMU's seccomp sandbox, on for every QEMU Ferry starts: a guest that breaks out of QEMU
// cannot run programs (spawn=deny: no fork/exec, so no exec: migration URIs or tap scripts),
// change its user (elevateprivileges=deny), set CPU affinity or scheduling
// (resourcecontrol=deny) or use obsolete system calls. Ferry needs none of these: moves use
// tcp:/unix: URIs, taps are opened with script=no, and priorities are set before QEMU runs
// (nice / systemd-run --nice), never by QEMU.
import { FerryError, messageOf } from '../errors.js';
import { run } from '../util/exec.js';
import { QEMU_BINARY } from './process.js';

/** The -sandbox option's value. */
export const SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';
export const SANDBOX_ARGS: readonly string[] = ['-sandbox', SANDBOX];
const SANDBOX_PARAMS = ['obsolete', 'elevateprivileges', 'spawn', 'resourcecontrol'];

export class SandboxUnsupportedError extends FerryError {
  constructor(reason: string, cause?: unknown) {
    super(
      'E_QEMU_SANDBOX',
      `Cannot run QEMU confined: ${QEMU_BINARY} does not accept -sandbox ${SANDBOX}: ${reason}; ` +
        'install a QEMU built with seccomp (Debian: qemu-system-x86 ≥ 7.2) on a kernel with seccomp',
      { context: { qemu: QEMU_BINARY }, cause },
    );
  }
}

/**
 * What QEMU answered: its QMP lines when run with the sandbox on. Pure, for the unit test:
 * the sandbox is usable if QEMU got as far as answering and lists every parameter we set.
 */
export function checkSandboxAnswer(stdout: string): string | null {
  for (const line of stdout.split('\n')) {
    let msg: { return?: unknown };
    try {
      msg = JSON.parse(line) as { return?: unknown };
    } catch {
      continue;
    }
    if (!Array.isArray(msg.return)) continue;
    const opt = (msg.return as Array<{ option?: string; parameters?: Array<{ name?: string }> }>).find(
      (o) => o.option === 'sandbox',
    );
    if (!opt) return 'QEMU lists no -sandbox option (built without seccomp)';
    const names = new Set((opt.parameters ?? []).map((p) => p.name));
    const missing = SANDBOX_PARAMS.filter((p) => !names.has(p));
    return missing.length ? `QEMU's -sandbox lacks ${missing.join(', ')}` : null;
  }
  return 'QEMU did not answer query-command-line-options';
}

let probed: Promise<void> | null = null;

/**
 * Starts an empty QEMU (-machine none) once per process with the sandbox on and asks it
 * which -sandbox parameters it knows: a QEMU without seccomp, or a kernel without it, fails
 * here with one clear error instead of every VM start failing on its own.
 */
export function ensureSandbox(opts: { signal?: AbortSignal } = {}): Promise<void> {
  probed ??= probeSandbox(opts.signal);
  // A failed probe (e.g. aborted) is tried again by the next caller.
  probed.catch(() => {
    probed = null;
  });
  return probed;
}

async function probeSandbox(signal?: AbortSignal): Promise<void> {
  const input = [
    { execute: 'qmp_capabilities' },
    { execute: 'query-command-line-options', arguments: { option: 'sandbox' } },
    { execute: 'quit' },
  ]
    .map((c) => JSON.stringify(c))
    .join('\n');
  let stdout: string;
  try {
    ({ stdout } = await run(
      QEMU_BINARY,
      ['-nodefaults', '-no-user-config', '-display', 'none', '-machine', 'none', ...SANDBOX_ARGS, '-qmp', 'stdio'],
      { input: input + '\n', timeoutMs: 20_000, signal },
    ));
  } catch (err) {
    if (signal?.aborted) throw err;
    throw new SandboxUnsupportedError(messageOf(err), err);
  }
  const problem = checkSandboxAnswer(stdout);
  if (problem) throw new SandboxUnsupportedError(problem);
}
