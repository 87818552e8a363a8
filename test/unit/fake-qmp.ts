// A scripted QMP peer on a unix socket, for unit tests of protocol logic; the real-QEMU
// behaviour is in test/integration/qmp.test.ts.
import net from 'node:net';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';

/**
 * Listens as QEMU would (greeting, `qmp_capabilities`), hands every other command to
 * `onCommand` with a `send` for replies and events; returns the socket's path. Removed after `t`.
 */
export async function fakeQemu(
  t: TestContext,
  onCommand: (msg: { execute: string; id: string }, send: (o: unknown) => void) => void,
): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-qmp-'));
  const sock = path.join(dir, 'qmp.sock');
  const conns: net.Socket[] = [];
  const server = net.createServer((c) => {
    conns.push(c);
    const send = (o: unknown): void => {
      c.write(JSON.stringify(o) + '\r\n');
    };
    send({ QMP: { version: {}, capabilities: [] } });
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; id: string };
        buf = buf.slice(nl + 1);
        if (msg.execute === 'qmp_capabilities') send({ return: {}, id: msg.id });
        else onCommand(msg, send);
      }
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  t.after(async () => {
    for (const c of conns) c.destroy();
    server.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });
  return sock;
}
