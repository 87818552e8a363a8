// Pure protocol logic against a scripted unix-socket peer; the real-QEMU behaviour is in
// test/integration/qmp.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QmpClient } from '../../src/qemu/qmp.js';
import { FerryError } from '../../src/errors.js';
import { fakeQemu } from './fake-qmp.js';

test('replies are matched by id even out of order; events before a wait are found in history', async (t) => {
  const held: Array<() => void> = [];
  const sock = await fakeQemu(t, (msg, send) => {
    if (msg.execute === 'query-status')
      held.push(() => send({ return: { running: true, status: 'running' }, id: msg.id }));
    if (msg.execute === 'query-version') {
      send({ event: 'BLOCK_JOB_READY', data: { device: 'copy-disk0' }, timestamp: { seconds: 1, microseconds: 0 } });
      send({ return: { qemu: { major: 7, minor: 2, micro: 0 }, package: '' }, id: msg.id });
      for (const h of held.splice(0)) h();
    }
    if (msg.execute === 'stop') send({ error: { class: 'GenericError', desc: 'nope' }, id: msg.id });
  });
  const qmp = await QmpClient.connect(sock, { vm: 'fake' });
  t.after(() => qmp.close());
  const status = qmp.execute('query-status');
  const version = await qmp.execute('query-version');
  assert.equal(version.qemu.major, 7);
  assert.equal((await status).status, 'running');
  const ready = await qmp.waitEvent((e) => e.event === 'BLOCK_JOB_READY' && e.data?.device === 'copy-disk0', {
    timeoutMs: 100,
  });
  assert.equal(ready.index, 0);
  await assert.rejects(
    qmp.waitEvent((e) => e.event === 'BLOCK_JOB_READY', { since: qmp.eventMark, timeoutMs: 50 }),
    (e: FerryError) => e.code === 'E_TIMEOUT',
  );
  await assert.rejects(
    qmp.execute('stop'),
    (e: FerryError) => e.code === 'E_QMP' && e.context.qemuClass === 'GenericError',
  );
});

test('events() yields live events and ends when the connection closes', async (t) => {
  let sendEv: ((o: unknown) => void) | null = null;
  const sock = await fakeQemu(t, (msg, send) => {
    sendEv = send;
    send({ return: {}, id: msg.id });
  });
  const qmp = await QmpClient.connect(sock, { vm: 'fake' });
  await qmp.execute('cont');
  const seen: string[] = [];
  const done = (async () => {
    for await (const e of qmp.events()) seen.push(e.event);
  })();
  await new Promise((r) => setTimeout(r, 20));
  sendEv!({ event: 'STOP' });
  sendEv!({ event: 'RESUME' });
  await new Promise((r) => setTimeout(r, 50));
  qmp.close();
  await done;
  assert.deepEqual(seen, ['STOP', 'RESUME']);
  await assert.rejects(qmp.execute('cont'), (e: FerryError) => e.code === 'E_QMP_CLOSED');
});

test('connect gives up with a clear error when nothing listens', async () => {
  await assert.rejects(
    QmpClient.connect('/nonexistent/qmp.sock', { vm: 'x', timeoutMs: 300 }),
    (e: FerryError) => e.code === 'E_QMP_CONNECT' && /VM 'x'/.test(e.message),
  );
});
