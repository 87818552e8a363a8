// QEMU 7.2's NBD server leaves Nagle on for the connections it accepts, and a disk copied over NBD
// waits for delayed ACKs (docs/performance.md, "Nagle on the NBD server"). The agent sets
// TCP_NODELAY on QEMU's listening socket (qemu/tcp-nodelay.ts): checked here on a real QEMU's
// NBD server, on the connection it accepts (a copy of QEMU's own descriptor, read back).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { QmpClient } from '../../src/qemu/qmp.js';
import { QEMU_BINARY } from '../../src/qemu/process.js';
import { acceptedFds, noDelayOnListener, tcpNoDelayOf } from '../../src/qemu/tcp-nodelay.js';
import { probePort } from '../../src/util/free-port.js';
import { tempDir } from '../helpers.js';

/** Connects to QEMU's NBD port and returns QEMU's descriptor of the connection it accepted. */
async function accepted(t: { after: (fn: () => void) => void }, pid: number, port: number): Promise<number> {
  const before = new Set(await acceptedFds(pid, port));
  const c = net.connect(port, '127.0.0.1');
  t.after(() => c.destroy());
  await new Promise<void>((resolve, reject) => c.once('connect', resolve).once('error', reject));
  for (let i = 0; i < 100; i++) {
    const fd = (await acceptedFds(pid, port)).find((f) => !before.has(f));
    if (fd !== undefined) return fd;
    await sleep(20);
  }
  throw new Error('QEMU accepted no connection');
}

test("QEMU's NBD server accepts with TCP_NODELAY once the agent set it on its listener", async (t) => {
  const dir = await tempDir(t, 'ferry-nodelay-');
  const sock = path.join(dir, 'qmp');
  const proc: ChildProcess = spawn(
    QEMU_BINARY,
    ['-nodefaults', '-display', 'none', '-machine', 'none', '-qmp', `unix:${sock},server=on,wait=off`],
    { stdio: 'ignore' },
  );
  t.after(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  });
  const pid = proc.pid;
  assert.ok(pid);
  const qmp = await QmpClient.connect(sock, { vm: 'nodelay' });
  t.after(() => qmp.close());
  const port = await probePort('127.0.0.1', 0);
  assert.ok(port);
  await qmp.execute('nbd-server-start', { addr: { type: 'inet', data: { host: '127.0.0.1', port: String(port) } } });

  // QEMU's own setting: Nagle on (what makes the copy wait).
  assert.equal(await tcpNoDelayOf(pid, await accepted(t, pid, port)), false, 'QEMU 7.2 accepts with Nagle on');

  assert.equal(await noDelayOnListener(pid, port), null);
  assert.equal(await tcpNoDelayOf(pid, await accepted(t, pid, port)), true, 'accepted after: TCP_NODELAY');

  // Never throws: a port nobody listens on, a process that is gone.
  assert.match((await noDelayOnListener(pid, port + 1 === 65536 ? 1 : port + 1)) ?? '', /no socket listens/);
  proc.kill('SIGKILL');
  await new Promise((r) => proc.once('exit', r));
  assert.ok(await noDelayOnListener(pid, port));
});
