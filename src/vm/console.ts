// A VM's consoles on its host: the serial port (a Unix socket QEMU serves; QEMU itself keeps
// the serial log) shared by every attached client, the VNC display (a Unix socket, one
// connection per viewer) and screenshots. The agent's websocket routes relay these.
import net from 'node:net';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { FerryError, messageOf } from '../errors.js';
import type { QmpClient } from '../qemu/qmp.js';

/** What a serial client gets: the guest's output, and the end of the port (the VM stopped or left). */
export interface SerialClient {
  data(chunk: Buffer): void;
  closed(reason: string): void;
}

/**
 * One connection to QEMU's serial socket (QEMU serves one client at a time), shared by all
 * attached clients: output goes to each, input from any goes to the guest. It is read at
 * once whatever the clients do, so a slow viewer never stalls the guest's serial port.
 */
export class SerialHub {
  private sock: Promise<net.Socket> | null = null;
  private clients = new Set<SerialClient>();

  constructor(
    private readonly socketPath: string,
    private readonly onEmpty: () => void,
  ) {}

  /** Connects (on the first client) and adds `c`; throws if the VM's serial socket cannot be reached. */
  async attach(
    c: SerialClient,
    opts: { timeoutMs?: number } = {},
  ): Promise<{ write(b: Buffer): void; detach(): void }> {
    const pending = (this.sock ??= this.connect(opts.timeoutMs ?? 5000));
    const sock = await pending.catch((err: unknown) => {
      if (this.sock === pending) this.sock = null;
      throw err;
    });
    this.clients.add(c);
    return {
      write: (b: Buffer) => {
        if (!sock.destroyed) sock.write(b);
      },
      detach: () => {
        if (!this.clients.delete(c)) return;
        if (this.clients.size === 0) this.end(pending, null);
      },
    };
  }

  private async connect(timeoutMs: number): Promise<net.Socket> {
    const sock = await connectUnix(this.socketPath, timeoutMs);
    const self = this.sock;
    sock.on('data', (b: Buffer) => {
      for (const x of this.clients) x.data(b);
    });
    sock.on('error', () => undefined); // 'close' follows and says it
    sock.once('close', () => {
      if (self) this.end(self, 'the serial port closed (the VM stopped or moved)');
    });
    return sock;
  }

  get size(): number {
    return this.clients.size;
  }

  private end(which: Promise<net.Socket>, reason: string | null): void {
    if (this.sock !== which) return;
    this.sock = null;
    const clients = [...this.clients];
    this.clients.clear();
    void which.then((s) => s.destroy()).catch(() => undefined);
    if (reason) for (const c of clients) c.closed(reason);
    this.onEmpty();
  }
}

/** A connection to a Unix socket of QEMU's (serial, VNC), failing clearly after `timeoutMs`. */
export function connectUnix(socketPath: string, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socketPath);
    const timer = setTimeout(() => {
      s.destroy();
      reject(new FerryError('E_QEMU_GONE', `Cannot connect to ${socketPath}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(
        new FerryError('E_QEMU_GONE', `Cannot connect to ${socketPath}: ${messageOf(err)}; is the VM running?`, {
          cause: err,
        }),
      );
    });
  });
}

/** The VM's screen as PNG bytes (QMP screendump into the run folder, read and removed). */
export async function screendumpPng(
  qmp: QmpClient,
  runDir: string,
  opts: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<Buffer> {
  const file = path.join(runDir, `screen-${randomBytes(6).toString('hex')}.png`);
  try {
    await qmp.execute('screendump', { filename: file, format: 'png' }, { timeoutMs: 10_000, ...opts });
    return await fsp.readFile(file);
  } finally {
    await fsp.rm(file, { force: true });
  }
}
