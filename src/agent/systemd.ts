// Readiness for systemd (`Type=notify`): when the unit handed the agent $NOTIFY_SOCKET, the
// agent says READY=1 once it serves. Node cannot write to a Unix datagram socket, so this
// runs systemd-notify; as root it sends with the agent's pid, so systemd attributes the
// message to the unit's main process even though the helper exits at once.
import { run } from '../util/exec.js';

/** Sends `fields` (READY=1, STATUS=…, STOPPING=1) when running under systemd; false otherwise. */
export async function notifySystemd(
  fields: Record<string, string>,
  opts: { signal?: AbortSignal } = {},
): Promise<boolean> {
  if (!process.env.NOTIFY_SOCKET) return false;
  await run(
    'systemd-notify',
    Object.entries(fields).map(([k, v]) => `${k}=${v}`),
    { timeoutMs: 10_000, ...(opts.signal ? { signal: opts.signal } : {}) },
  );
  return true;
}
