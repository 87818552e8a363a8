// `ferry vm console NAME --interactive`: the guest's serial port read-write through the
// agent's websocket, the terminal in raw mode. Ctrl-] detaches (as telnet and virsh do).
// When the VM leaves its host (a move) the console finds it on its new host and reattaches.
import type { WebSocket } from 'ws';
import { FerryError, NotFoundError } from '../errors.js';
import { sleep } from '../util/exec.js';
import type { Clients } from './context.js';

/** Ctrl-] */
export const DETACH_BYTE = 0x1d;
/** How long to look for the VM on another host after its console closed. */
const FOLLOW_MS = 120_000;
/** Close code the agent uses when the VM stopped or left the host. */
const CONSOLE_GONE = 4000;

export interface InteractiveOptions {
  input: NodeJS.ReadStream;
  output: NodeJS.WritableStream;
  /** Notices (connected, moved, detached) go here, never into the guest's output. */
  notices: NodeJS.WritableStream;
  signal?: AbortSignal;
}

/** Runs until the user detaches, input ends, or the VM stops; resolves with why. */
export async function interactiveConsole(c: Clients, name: string, o: InteractiveOptions): Promise<string> {
  const tty = o.input.isTTY;
  if (tty) o.input.setRawMode(true);
  o.input.resume();
  let pending: Buffer[] = [];
  let current: WebSocket | null = null;
  let stop: ((why: string) => void) | null = null;
  const done = new Promise<string>((resolve) => (stop = resolve));
  const finish = (why: string): void => {
    stop?.(why);
    current?.close(1000);
  };
  const onInput = (b: Buffer): void => {
    const at = b.indexOf(DETACH_BYTE);
    const data = at === -1 ? b : b.subarray(0, at);
    if (data.length) {
      if (current?.readyState === current?.OPEN) current?.send(data);
      else pending.push(Buffer.from(data));
    }
    if (at !== -1) finish('detached');
  };
  // Piped input: once it ends, give the guest a moment to answer, then leave.
  const onEnd = (): void => void sleep(1500).then(() => finish('input ended'));
  o.input.on('data', onInput);
  o.input.once('end', onEnd);
  o.signal?.addEventListener('abort', () => finish('interrupted'), { once: true });
  try {
    let first = true;
    for (;;) {
      const at = await findRunning(c, name, first ? 0 : FOLLOW_MS, done);
      if (typeof at === 'string') return at;
      const ws = await at.client.websocket(`/v1/vms/${encodeURIComponent(name)}/serial`);
      current = ws;
      const ended = await new Promise<{ code: number; reason: string } | Error>((resolve) => {
        ws.on('open', () => {
          o.notices.write(
            first
              ? `Connected to the serial console of '${name}' on ${at.host}. Detach with Ctrl-].\r\n`
              : `[VM '${name}' is now on ${at.host}: reattached]\r\n`,
          );
          for (const b of pending) ws.send(b);
          pending = [];
        });
        ws.on('message', (data: Buffer) => o.output.write(data));
        ws.on('unexpected-response', (_req, res) => {
          const chunks: Buffer[] = [];
          res.on('data', (b: Buffer) => chunks.push(b));
          res.on('end', () => {
            let e: { code?: string; message?: string } | undefined;
            try {
              e = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error?: typeof e }).error;
            } catch {
              /* not JSON */
            }
            resolve(FerryError.fromWire(e, `Cannot attach to VM '${name}': HTTP ${res.statusCode ?? 500}`));
          });
        });
        ws.on('error', (err) => resolve(err));
        ws.on('close', (code, reason) => resolve({ code, reason: reason.toString('utf8') }));
      });
      current = null;
      const stopped = await Promise.race([done, Promise.resolve(null)]);
      if (stopped) return stopped;
      if (ended instanceof Error) {
        // A console that never opened on the first try is the user's error to see.
        if (first) throw ended;
      } else if (ended.code !== CONSOLE_GONE) {
        return `the console closed (${ended.reason || ended.code})`;
      } else {
        o.notices.write(`\r\n[${ended.reason}; looking for '${name}' on its new host]\r\n`);
      }
      first = false;
    }
  } finally {
    o.input.off('data', onInput);
    o.input.off('end', onEnd);
    if (tty) o.input.setRawMode(false);
    o.input.pause();
  }
}

/** The host where the VM runs now, waiting up to `waitMs` (a move in progress), or why to stop. */
async function findRunning(
  c: Clients,
  name: string,
  waitMs: number,
  done: Promise<string>,
): Promise<{ client: ReturnType<Clients['host']>; host: string } | string> {
  const until = Date.now() + waitMs;
  for (;;) {
    let last: string;
    const stopped = await Promise.race([done, Promise.resolve(null)]);
    if (stopped) return stopped;
    try {
      const { client, vm } = await c.locate(name);
      // First attach: wherever it is unless stopped; following a move: where it runs again.
      if (vm.state === 'running' || (waitMs === 0 && vm.state !== 'stopped')) return { client, host: vm.host };
      last = `VM '${name}' is ${vm.state} on ${vm.host}`;
      if (waitMs === 0)
        throw new FerryError('E_VM_NOT_RUNNING', `Cannot attach to VM '${name}': it is stopped; start it first`);
    } catch (err) {
      if (!(err instanceof NotFoundError) || waitMs === 0) throw err;
      last = `VM '${name}' is on no host`;
    }
    if (Date.now() > until) return waitMs ? `${last} after ${Math.round(waitMs / 1000)} s; giving up` : last;
    await Promise.race([sleep(500), done]);
  }
}
