// A VM's consoles over the agent's mutual-TLS port, admin only: the serial port read-write
// (`ferry vm console --interactive`), the VNC display (the web console's noVNC) as websockets
// relaying QEMU's Unix sockets, and a PNG screenshot. A websocket closes with code 4000 when
// the VM stops or leaves this host; the client then finds the VM's new host and reconnects.
// An upgraded websocket never reaches the server's audit hook (a GET, and its reply is
// hijacked), so each console session is recorded here: who opened which VM's console.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import websocket from '@fastify/websocket';
import type { WebSocket } from 'ws';

/** What the relays use of a client's websocket. */
type Peer = Pick<WebSocket, 'readyState' | 'OPEN' | 'bufferedAmount' | 'send' | 'close' | 'on'>;
import { actions } from '../../api/actions.js';
import { FerryError } from '../../errors.js';
import { loadVm } from '../../vm/folder.js';
import { runtimePaths } from '../../vm/lifecycle.js';
import { connectUnix, screendumpPng, SerialHub } from '../../vm/console.js';
import { registerAction } from '../server.js';
import type { VmInventory } from '../vms.js';
import { actorOf, type AuditLog } from '../audit.js';
import { ACTOR_HEADER, ACTOR_ROLE_HEADER } from '../../api/common.js';

/** Close code of a console whose VM stopped or left this host. */
export const CONSOLE_GONE = 4000;
/** Largest frame a client may send (keystrokes and VNC input are small). */
const MAX_FRAME = 64 * 1024;
/** A viewer this far behind is dropped rather than buffered without end. */
const MAX_BUFFERED = 8 * 1024 * 1024;

export function consoleRoutes(app: FastifyInstance, engine: VmInventory, audit: AuditLog): void {
  const hubs = new Map<string, SerialHub>();

  /** One audit line per console websocket: opened (101) or failed to reach QEMU's socket. */
  const record = (req: FastifyRequest, action: string, started: number, failure: string | null): void => {
    void audit.append({
      time: new Date().toISOString(),
      requestId: req.id,
      host: engine.host,
      ...actorOf(req.peer ?? null, req.headers[ACTOR_HEADER], req.headers[ACTOR_ROLE_HEADER]),
      action,
      method: 'GET',
      path: (req.url.split('?')[0] ?? '').slice(0, 1000),
      target: `vm:${(req.params as { name: string }).name}`,
      outcome: failure ? 'failed' : 'ok',
      status: 101,
      code: failure,
      ms: Date.now() - started,
    });
  };

  /** The VM's run folder, refusing (before the upgrade) a VM that is not running here. */
  const runningVm = async (req: FastifyRequest, needScreen: boolean): Promise<{ runDir: string }> => {
    const name = (req.params as { name: string }).name;
    const rec = engine.record(name);
    if (!engine.isRunning(name))
      throw new FerryError(
        'E_VM_NOT_RUNNING',
        `Cannot attach to the console of VM '${name}': it is not running on host '${engine.host}'; start it first`,
        { context: { vm: name } },
      );
    if (needScreen && (await loadVm(rec.configPath)).display === 'none')
      throw new FerryError(
        'E_NO_DISPLAY',
        `Cannot show the screen of VM '${name}': it has no display; ` +
          `use its serial console ('ferry vm console ${name}')`,
        { context: { vm: name } },
      );
    return { runDir: engine.runDir(rec.id) };
  };

  registerAction(app, actions.vmScreenshot, async ({ params, signal }, req, reply) => {
    const { runDir } = await runningVm(req, true);
    const proc = engine.proc(params.name);
    if (!proc) throw new FerryError('E_VM_NOT_RUNNING', `Cannot take a screenshot of VM '${params.name}': it stopped`);
    void reply.type('image/png').header('cache-control', 'no-store');
    return (await screendumpPng(proc.qmp, runDir, { signal })) as unknown as string;
  });

  void app.register(async (scope) => {
    await scope.register(websocket, { options: { maxPayload: MAX_FRAME } });

    scope.get(
      '/v1/vms/:name/serial',
      {
        websocket: true,
        preValidation: async (req) => {
          await runningVm(req, false);
        },
      },
      async (ws, req) => {
        const started = Date.now();
        const name = (req.params as { name: string }).name;
        const early = buffered(ws);
        const { runDir } = await runningVm(req, false).catch(() => ({ runDir: null }));
        if (!runDir) {
          record(req, 'vm.serial', started, 'E_VM_NOT_RUNNING');
          ws.close(CONSOLE_GONE, 'the VM stopped');
          return;
        }
        let hub = hubs.get(name);
        if (!hub) {
          const h = new SerialHub(runtimePaths(runDir).serialSocket, () => {
            if (hubs.get(name) === h) hubs.delete(name);
          });
          hubs.set(name, h);
          hub = h;
        }
        const session = await hub
          .attach({
            data: (b) => send(ws, b),
            closed: (why) => ws.close(CONSOLE_GONE, why),
          })
          .catch((err: unknown) => {
            ws.close(CONSOLE_GONE, truncate(err instanceof Error ? err.message : String(err)));
            return null;
          });
        record(req, 'vm.serial', started, session ? null : 'E_QEMU_GONE');
        if (!session) return;
        early.drain((data) => session.write(data));
        ws.on('close', () => session.detach());
      },
    );

    scope.get(
      '/v1/vms/:name/vnc',
      {
        websocket: true,
        preValidation: async (req) => {
          await runningVm(req, true);
        },
      },
      async (ws, req) => {
        const started = Date.now();
        const early = buffered(ws);
        const { runDir } = await runningVm(req, true).catch(() => ({ runDir: null }));
        if (!runDir) {
          record(req, 'vm.vnc', started, 'E_VM_NOT_RUNNING');
          ws.close(CONSOLE_GONE, 'the VM stopped');
          return;
        }
        const sock = await connectUnix(runtimePaths(runDir).vncSocket, 5000).catch((err: unknown) => {
          ws.close(CONSOLE_GONE, truncate(err instanceof Error ? err.message : String(err)));
          return null;
        });
        record(req, 'vm.vnc', started, sock ? null : 'E_QEMU_GONE');
        if (!sock) return;
        sock.on('data', (b: Buffer) => send(ws, b));
        sock.on('error', () => undefined);
        sock.on('close', () => ws.close(CONSOLE_GONE, 'the display closed (the VM stopped or moved)'));
        early.drain((data) => sock.write(data));
        ws.on('close', () => sock.destroy());
      },
    );
  });
}

/** Holds what a client sends while the relay connects (messages are not queued by ws itself). */
function buffered(ws: Peer): { drain(to: (b: Buffer) => void): void } {
  const held: Buffer[] = [];
  let sink: ((b: Buffer) => void) | null = null;
  ws.on('message', (data: Buffer) => (sink ? sink(data) : held.push(data)));
  return {
    drain(to) {
      for (const b of held.splice(0)) to(b);
      sink = to;
    },
  };
}

function send(ws: Peer, b: Buffer): void {
  if (ws.readyState !== ws.OPEN) return;
  if (ws.bufferedAmount > MAX_BUFFERED) ws.close(1013, 'the viewer fell too far behind; reconnect');
  else ws.send(b);
}

/** A close reason must fit in a control frame (123 bytes). */
function truncate(s: string): string {
  return Buffer.byteLength(s) <= 120 ? s : `${Buffer.from(s).subarray(0, 117).toString('utf8')}...`;
}
