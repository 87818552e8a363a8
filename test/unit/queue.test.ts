import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as tick } from 'node:timers/promises';
import { SlotQueue, type Priority } from '../../src/migration/queue.js';
import { AbortedError, FerryError } from '../../src/errors.js';

type State = 'pending' | 'resolved' | 'rejected';

/** Tracks a promise's state so tests can look without awaiting. */
function track(p: Promise<void>): { readonly state: State; readonly error: unknown; promise: Promise<void> } {
  const t = { state: 'pending' as State, error: undefined as unknown, promise: p };
  p.then(
    () => {
      t.state = 'resolved';
    },
    (e: unknown) => {
      t.state = 'rejected';
      t.error = e;
    },
  );
  return t;
}

/** Lets resolved promises' callbacks run. */
async function flush(): Promise<void> {
  await tick();
}

function queue(limit: number): { q: SlotQueue; setLimit: (n: number) => void } {
  let l = limit;
  return {
    q: new SlotQueue(() => l),
    setLimit: (n) => {
      l = n;
    },
  };
}

/** Fills all slots with ids 'run-1'..'run-n'. */
async function fill(q: SlotQueue, n: number): Promise<void> {
  for (let i = 1; i <= n; i++) await q.acquire(`run-${i}`, 'normal');
}

test('limit respected: up to `limit` acquire at once, the next waits', async () => {
  const { q } = queue(2);
  const a = track(q.acquire('a', 'normal'));
  const b = track(q.acquire('b', 'low'));
  const c = track(q.acquire('c', 'high'));
  await flush();
  assert.equal(a.state, 'resolved');
  assert.equal(b.state, 'resolved');
  assert.equal(c.state, 'pending');
  assert.deepEqual(q.running, ['a', 'b']);
  assert.deepEqual(q.queued, ['c']);
});

test('limit respected under churn: never more than `limit` running', async () => {
  const { q } = queue(3);
  const prios: Priority[] = ['low', 'normal', 'high'];
  const ts = Array.from({ length: 12 }, (_, i) => track(q.acquire(`m${i}`, prios[i % 3]!)));
  await flush();
  assert.equal(q.running.length, 3);
  let done = 0;
  // Read through a function: the assert above narrows `q.running.length` to 3 for TypeScript.
  const running = (): string[] => q.running;
  while (running().length) {
    assert.ok(running().length <= 3);
    q.release(running()[0]!);
    done++;
    await flush();
  }
  assert.equal(done, 12);
  assert.ok(ts.every((t) => t.state === 'resolved'));
  assert.deepEqual(q.queued, []);
});

test('FIFO within a priority', async () => {
  const { q } = queue(1);
  await fill(q, 1);
  const order: string[] = [];
  const ps = ['n1', 'n2', 'n3', 'n4'].map((id) =>
    q.acquire(id, 'normal').then(() => {
      order.push(id);
    }),
  );
  assert.deepEqual(q.queued, ['n1', 'n2', 'n3', 'n4']);
  q.release('run-1');
  for (const id of ['n1', 'n2', 'n3']) {
    await flush();
    q.release(id);
  }
  await Promise.all(ps);
  assert.deepEqual(order, ['n1', 'n2', 'n3', 'n4']);
});

test('high before normal before low, FIFO inside each', async () => {
  const { q } = queue(1);
  await fill(q, 1);
  const order: string[] = [];
  const reqs: Array<[string, Priority]> = [
    ['low1', 'low'],
    ['norm1', 'normal'],
    ['high1', 'high'],
    ['low2', 'low'],
    ['norm2', 'normal'],
    ['high2', 'high'],
  ];
  const ps = reqs.map(([id, pr]) =>
    q.acquire(id, pr).then(() => {
      order.push(id);
    }),
  );
  assert.deepEqual(q.queued, ['high1', 'high2', 'norm1', 'norm2', 'low1', 'low2']);
  let cur = 'run-1';
  for (let i = 0; i < reqs.length; i++) {
    q.release(cur);
    await flush();
    assert.equal(q.running.length, 1);
    cur = q.running[0]!;
  }
  await Promise.all(ps);
  assert.deepEqual(order, ['high1', 'high2', 'norm1', 'norm2', 'low1', 'low2']);
});

test('a later high-priority request overtakes waiting normal ones', async () => {
  const { q } = queue(1);
  await fill(q, 1);
  const n = track(q.acquire('n', 'normal'));
  const h = track(q.acquire('h', 'high'));
  q.release('run-1');
  await flush();
  assert.equal(h.state, 'resolved');
  assert.equal(n.state, 'pending');
  assert.deepEqual(q.running, ['h']);
});

test('position(): 1-based queue position, null when not waiting', async () => {
  const { q } = queue(1);
  await fill(q, 1);
  void q.acquire('low', 'low');
  void q.acquire('n1', 'normal');
  void q.acquire('n2', 'normal');
  void q.acquire('high', 'high');
  assert.equal(q.position('high'), 1);
  assert.equal(q.position('n1'), 2);
  assert.equal(q.position('n2'), 3);
  assert.equal(q.position('low'), 4);
  assert.equal(q.position('run-1'), null, 'running is not queued');
  assert.equal(q.position('nobody'), null);
  q.release('run-1');
  await flush();
  assert.equal(q.position('high'), null);
  assert.equal(q.position('n1'), 1);
  assert.equal(q.position('low'), 3);
});

test('release pumps the next waiter', async () => {
  const { q } = queue(2);
  await fill(q, 2);
  const w = track(q.acquire('w', 'normal'));
  await flush();
  assert.equal(w.state, 'pending');
  q.release('run-2');
  await flush();
  assert.equal(w.state, 'resolved');
  assert.deepEqual(q.running.sort(), ['run-1', 'w']);
  assert.deepEqual(q.queued, []);
});

test('release of an unknown id changes nothing', async () => {
  const { q } = queue(1);
  await fill(q, 1);
  const w = track(q.acquire('w', 'normal'));
  q.release('ghost');
  await flush();
  assert.equal(w.state, 'pending');
  assert.deepEqual(q.running, ['run-1']);
});

test('aborting a waiting acquire removes it from the queue and rejects with E_ABORTED', async () => {
  const { q } = queue(1);
  await fill(q, 1);
  const ac = new AbortController();
  const a = track(q.acquire('a', 'normal'));
  const b = track(q.acquire('b', 'normal', ac.signal));
  const c = track(q.acquire('c', 'normal'));
  assert.equal(q.position('c'), 3);
  ac.abort(new Error('user cancelled'));
  await flush();
  assert.equal(b.state, 'rejected');
  assert.ok(b.error instanceof AbortedError);
  assert.ok(b.error instanceof FerryError);
  assert.equal(b.error.code, 'E_ABORTED');
  assert.match((b.error as Error).message, /wait for a migration slot/);
  assert.deepEqual(q.queued, ['a', 'c']);
  assert.equal(q.position('b'), null);
  assert.equal(q.position('c'), 2);
  // the slot then goes to the others, never to the aborted one
  q.release('run-1');
  await flush();
  assert.equal(a.state, 'resolved');
  q.release('a');
  await flush();
  assert.equal(c.state, 'resolved');
  assert.deepEqual(q.running, ['c']);
});

test('abort rejection carries the abort reason as cause', async () => {
  const { q } = queue(1);
  await fill(q, 1);
  const ac = new AbortController();
  const reason = new Error('migration cancelled by operator');
  const p = q.acquire('x', 'high', ac.signal);
  ac.abort(reason);
  await assert.rejects(p, (e: unknown) => e instanceof AbortedError && e.code === 'E_ABORTED' && e.cause === reason);
});

test('an already-aborted signal rejects at once when it would have to wait, and is not queued', async () => {
  const { q } = queue(1);
  await fill(q, 1);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(q.acquire('x', 'normal', ac.signal), { code: 'E_ABORTED' });
  assert.deepEqual(q.queued, []);
  assert.equal(q.position('x'), null);
});

test('aborting after the slot was granted changes nothing', async () => {
  const { q } = queue(1);
  await fill(q, 1);
  const ac = new AbortController();
  const w = track(q.acquire('w', 'normal', ac.signal));
  q.release('run-1');
  await flush();
  assert.equal(w.state, 'resolved');
  ac.abort();
  await flush();
  assert.equal(w.state, 'resolved');
  assert.deepEqual(q.running, ['w']);
});

test('tryAcquire: takes a free slot, fails when full', () => {
  const { q } = queue(1);
  assert.equal(q.tryAcquire('a'), true);
  assert.deepEqual(q.running, ['a']);
  assert.equal(q.tryAcquire('b'), false);
  assert.deepEqual(q.running, ['a']);
  assert.deepEqual(q.queued, [], 'tryAcquire never queues');
  q.release('a');
  assert.equal(q.tryAcquire('b'), true);
});

test('tryAcquire: idempotent for an id that already holds a slot (and so is acquire)', async () => {
  const { q } = queue(1);
  assert.equal(q.tryAcquire('a'), true);
  assert.equal(q.tryAcquire('a'), true);
  await q.acquire('a', 'low');
  assert.deepEqual(q.running, ['a']);
});

test('tryAcquire fails while others wait, even when a slot is free', async () => {
  const { q, setLimit } = queue(1);
  await fill(q, 1);
  const w = track(q.acquire('w', 'low'));
  assert.equal(q.tryAcquire('x'), false);
  // limit raised, pump not yet called: a slot is free but 'w' is first in line
  setLimit(2);
  assert.equal(q.tryAcquire('x'), false);
  assert.deepEqual(q.running, ['run-1']);
  // a new acquire also queues behind the waiter instead of jumping it
  const y = track(q.acquire('y', 'high'));
  await flush();
  assert.equal(y.state, 'pending');
  assert.equal(w.state, 'pending');
  assert.deepEqual(q.queued, ['y', 'w']);
});

test('limit raised + pump() starts waiters in queue order up to the new limit', async () => {
  const { q, setLimit } = queue(1);
  await fill(q, 1);
  const ts = new Map<string, ReturnType<typeof track>>();
  for (const [id, pr] of [
    ['l', 'low'],
    ['n', 'normal'],
    ['h', 'high'],
    ['n2', 'normal'],
  ] as Array<[string, Priority]>)
    ts.set(id, track(q.acquire(id, pr)));
  setLimit(3);
  q.pump();
  await flush();
  assert.equal(ts.get('h')!.state, 'resolved');
  assert.equal(ts.get('n')!.state, 'resolved');
  assert.equal(ts.get('n2')!.state, 'pending');
  assert.equal(ts.get('l')!.state, 'pending');
  assert.deepEqual(q.running, ['run-1', 'h', 'n']);
  assert.deepEqual(q.queued, ['n2', 'l']);
  // pump() without a limit change does nothing
  q.pump();
  await flush();
  assert.deepEqual(q.queued, ['n2', 'l']);
});

test('limit lowered: nobody is evicted, and releases start no one until below the new limit', async () => {
  const { q, setLimit } = queue(3);
  await fill(q, 3);
  const w = track(q.acquire('w', 'high'));
  setLimit(1);
  q.pump();
  assert.deepEqual(q.running, ['run-1', 'run-2', 'run-3']);
  q.release('run-1');
  q.release('run-2');
  await flush();
  assert.equal(w.state, 'pending');
  q.release('run-3');
  await flush();
  assert.equal(w.state, 'resolved');
  assert.deepEqual(q.running, ['w']);
});

test('limit 0 (migrations disabled): everything waits until raised', async () => {
  const { q, setLimit } = queue(0);
  assert.equal(q.tryAcquire('a'), false);
  const a = track(q.acquire('a', 'normal'));
  await flush();
  assert.equal(a.state, 'pending');
  setLimit(1);
  q.pump();
  await flush();
  assert.equal(a.state, 'resolved');
});
