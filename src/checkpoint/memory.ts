// A VM's memory and device state to and from a file, through a Unix socket the agent owns
// (QEMU 7.2 has no file: migration URI, and exec: URIs would run a shell). Saving: the
// agent listens, QEMU migrates into the socket, the agent writes what arrives to the file.
// Loading: QEMU (started with -incoming defer) listens, the agent streams the file in.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import { pipeline } from 'node:stream/promises';
import { FerryError, messageOf } from '../errors.js';
import type { QmpClient } from '../qemu/qmp.js';
import { ownForQemu } from '../qemu/user.js';
import type { MigrationInfo } from '../qemu/commands.js';
import { sleep } from '../util/exec.js';

/** Memory is copied as fast as the host can: the guest is paused while it is written. */
const SAVE_BANDWIDTH = 64 * 1024 ** 3;

export interface StreamOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

async function waitMigration(qmp: QmpClient, what: string, opts: StreamOptions): Promise<MigrationInfo> {
  const until = Date.now() + (opts.timeoutMs ?? 10 * 60_000);
  for (;;) {
    const info = await qmp.execute('query-migrate', undefined, { signal: opts.signal, timeoutMs: 10_000 });
    if (info.status === 'completed') return info;
    if (info.status === 'failed' || info.status === 'cancelled')
      throw new FerryError('E_CHECKPOINT_MEMORY', `Cannot ${what}: QEMU's migration ${info.status}`, {
        context: { error: info['error-desc'] ?? null },
      });
    if (Date.now() > until) throw new FerryError('E_TIMEOUT', `Cannot ${what}: it did not finish in time`);
    await sleep(10, opts.signal);
  }
}

/**
 * Saves the memory of a VM (its vCPUs should be stopped: the state is then one instant) into
 * `file`. QEMU's images are inactive afterwards (end of a migration): `cont` activates them.
 */
export async function saveMemory(
  qmp: QmpClient,
  file: string,
  socketPath: string,
  opts: StreamOptions = {},
): Promise<void> {
  await fsp.rm(socketPath, { force: true });
  const server = net.createServer();
  // Settles with the write's error (or null) so that a failure before it is awaited is not unhandled.
  let written: Promise<unknown> = Promise.resolve(null);
  const connected = new Promise<void>((resolve) => {
    server.once('connection', (sock: net.Socket) => {
      written = pipeline(sock, fs.createWriteStream(file, { flags: 'wx' })).then(
        () => null,
        (err: unknown) => err,
      );
      resolve();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, resolve);
  });
  // QEMU connects as its own user (qemu.user): connecting needs write access to the socket.
  await ownForQemu(socketPath);
  const before = await qmp.execute('query-migrate-parameters', undefined, { signal: opts.signal });
  try {
    // A move may have left its settings on this QEMU (TLS, a pause before switch-over, post-copy):
    // none of them fit one plain stream into a socket.
    await qmp.execute(
      'migrate-set-capabilities',
      {
        capabilities: [
          { capability: 'pause-before-switchover', state: false },
          { capability: 'postcopy-ram', state: false },
          { capability: 'multifd', state: false },
        ],
      },
      { signal: opts.signal },
    );
    await qmp.execute(
      'migrate-set-parameters',
      { 'max-bandwidth': SAVE_BANDWIDTH, 'tls-creds': '', 'tls-hostname': '' },
      { signal: opts.signal },
    );
    await qmp.execute('migrate', { uri: `unix:${socketPath}` }, { signal: opts.signal });
    await waitMigration(qmp, 'save the memory of the VM', opts);
    await connected;
    const err = await written;
    if (err)
      throw new FerryError('E_CHECKPOINT_MEMORY', `Cannot write the memory state to ${file}: ${messageOf(err)}`, {
        cause: err,
      });
    const fh = await fsp.open(file, 'r');
    await fh.sync().finally(() => fh.close());
  } catch (err) {
    await fsp.rm(file, { force: true });
    throw err;
  } finally {
    server.close();
    await fsp.rm(socketPath, { force: true });
    if (before['max-bandwidth'] !== undefined)
      await qmp.execute('migrate-set-parameters', { 'max-bandwidth': before['max-bandwidth'] }).catch(() => undefined);
  }
}

/** Loads saved memory into a QEMU started with `-incoming defer` (it stays paused: `cont` runs it). */
export async function loadMemory(
  qmp: QmpClient,
  file: string,
  socketPath: string,
  opts: StreamOptions = {},
): Promise<void> {
  await fsp.rm(socketPath, { force: true });
  await qmp.execute('migrate-incoming', { uri: `unix:${socketPath}` }, { signal: opts.signal });
  const sock = net.createConnection(socketPath);
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    // QEMU closes the socket as soon as it has read the stream's end marker, which can be before
    // Node's side of the pipe has finished ('Premature close'). QEMU's own status decides: a
    // send error matters only when the load did not complete.
    let sendError: unknown = null;
    const sent = pipeline(fs.createReadStream(file), sock).catch((err: unknown) => {
      sendError = err;
    });
    try {
      await waitMigration(qmp, `load the memory state ${file}`, opts);
    } catch (err) {
      if (sendError === null) throw err;
      throw new FerryError('E_CHECKPOINT_MEMORY', `Cannot load the memory state ${file}: ${messageOf(sendError)}`, {
        cause: sendError,
      });
    }
    sock.destroy();
    await sent;
  } finally {
    sock.destroy();
    await fsp.rm(socketPath, { force: true });
  }
}
