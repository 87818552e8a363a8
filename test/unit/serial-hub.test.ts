// The serial hub (pure Node, a Unix socket standing in for QEMU's serial port): one
// connection shared by every viewer, input from any, the end reported to all.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { SerialHub } from '../../src/vm/console.js';
import { tempDir } from '../helpers.js';
import { sleep } from '../../src/util/exec.js';

test('serial hub: one connection for all viewers; the port closing ends every session', async (t) => {
  const sockPath = path.join(await tempDir(t), 'serial.sock');
  const conns: net.Socket[] = [];
  let got = '';
  const server = net.createServer((s) => {
    conns.push(s);
    s.setEncoding('utf8').on('data', (d: string) => (got += d));
  });
  await new Promise<void>((r) => server.listen(sockPath, r));
  t.after(() => server.close());

  let emptied = 0;
  const hub = new SerialHub(sockPath, () => emptied++);
  const seen = ['', ''];
  const closed: string[] = [];
  const [a, b] = await Promise.all(
    [0, 1].map((i) =>
      hub.attach({
        data: (x) => (seen[i] = (seen[i] ?? '') + x.toString('utf8')),
        closed: (why) => closed.push(`${i}:${why}`),
      }),
    ),
  );
  assert.equal(conns.length, 1, 'QEMU serves one client: the viewers share it');
  conns[0]!.write('login: ');
  a!.write(Buffer.from('root\n'));
  b!.write(Buffer.from('x'));
  await sleep(100);
  assert.deepEqual(seen, ['login: ', 'login: ']);
  assert.equal(got, 'root\nx');

  a!.detach();
  await sleep(50);
  assert.equal(hub.size, 1);
  conns[0]!.destroy(); // the VM stopped or left
  await sleep(100);
  assert.deepEqual(closed, ['1:the serial port closed (the VM stopped or moved)']);
  assert.equal(emptied, 1);

  const c = await hub.attach({ data: () => undefined, closed: () => undefined });
  assert.equal(conns.length, 2, 'a new viewer reconnects');
  c.detach();
  await sleep(100);
  assert.ok(conns[1]!.destroyed || conns[1]!.readableEnded, 'the last viewer leaving closes the connection');
});
