// Lab ports come from below the kernel's ephemeral range, so no outgoing connection or other
// process's listen(0) can take one between the probe and the agent's (or etcd's) own bind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { ephemeralRange, freeLoopbackPort } from '../../src/util/free-port.js';

test('free loopback ports: below the ephemeral range, distinct, not in taken, and free to listen on', async () => {
  const [lo] = await ephemeralRange();
  const taken = new Set<number>();
  const ports: number[] = [];
  for (let i = 0; i < 20; i++) ports.push(await freeLoopbackPort(taken));
  assert.equal(new Set(ports).size, 20, 'each port is handed out once');
  assert.deepEqual([...taken].sort(), [...ports].sort(), 'each is added to taken');
  if (lo - 20_000 >= 1000) for (const p of ports) assert.ok(p >= 20_000 && p < lo, `${p} is below ${lo}`);
  for (const p of ports.slice(0, 5)) {
    const s = net.createServer();
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(p, '127.0.0.1', resolve);
    });
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
});
