// `ferry cluster drain` / `resume --failback` follow a batch through the agents' event streams,
// with fake agents: `cluster.batch` events in, VM lines out. Proves that the cluster is read
// only when events may have been missed (never a polling loop), and that a new leader's events
// are followed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import type { AgentClient } from '../../src/api/client.js';
import type { BatchView, ClusterView } from '../../src/api/schemas.js';
import { BatchLines, BatchWatch, type BatchSource } from '../../src/cli/batch-follow.js';

type Item = BatchView['items'][number];
const item = (vm: string, state: Item['state'], to: string | null = 'host-a', reason: string | null = null): Item => ({
  vm,
  from: 'host-c',
  priority: 'normal',
  to,
  state,
  migrationId: state === 'pending' ? null : `m-${vm}`,
  attempts: state === 'pending' ? 0 : 1,
  reason,
});
const batch = (state: BatchView['state'], items: Item[], startedAt = '2026-01-01T10:00:00.000Z'): BatchView => ({
  node: 'host-c',
  kind: 'drain',
  state,
  startedAt,
  finishedAt: state === 'running' ? null : '2026-01-01T10:01:00.000Z',
  items,
});

/** One host's agent: an event stream the test writes to. */
class FakeAgent {
  readonly streams: string[] = [];
  /** How many connections from now on are refused (a host down). */
  refusals = 0;
  private seq = 0;
  private open: { onData: (chunk: string) => void; end: () => void } | null = null;
  constructor(readonly host: string) {}

  stream(url: string, onData: (chunk: string) => void, opts: { signal?: AbortSignal; onOpen?: () => void } = {}) {
    this.streams.push(url);
    if (this.refusals-- > 0) return Promise.reject(new Error(`connect ECONNREFUSED (${this.host})`));
    return new Promise<void>((resolve) => {
      const end = (): void => {
        this.open = null;
        resolve();
      };
      this.open = { onData, end };
      opts.signal?.addEventListener('abort', end, { once: true });
      setImmediate(() => opts.onOpen?.());
    });
  }

  publish(b: BatchView): void {
    const e = { type: 'cluster.batch', batch: b, seq: ++this.seq, at: new Date().toISOString() };
    this.write(`id: ${e.seq}\nevent: ferry\ndata: ${JSON.stringify(e)}\n\n`);
  }

  write(frame: string): void {
    assert.ok(this.open, `the event stream of ${this.host} is open`);
    this.open.onData(frame);
  }

  drop(): void {
    this.open?.end();
  }

  get isOpen(): boolean {
    return this.open !== null;
  }

  get client(): AgentClient {
    return this as unknown as AgentClient;
  }
}

/** The hosts, and the cluster reads made (what `cluster status` answers is `cluster`). */
function source(agents: FakeAgent[], cluster: () => Partial<ClusterView>): BatchSource & { reads: number } {
  const src = {
    reads: 0,
    clients: agents.map((a) => a.client),
    readCluster: async () => {
      await Promise.resolve();
      src.reads++;
      return { leader: 'host-a', batches: [], ...cluster() } as unknown as ClusterView;
    },
  };
  return src;
}

const tick = (ms = 5): Promise<void> => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 400 && !cond(); i++) await tick();
  assert.ok(cond(), what);
}

/** Collects what is written. */
function sink(): { out: NodeJS.WritableStream; text: () => string } {
  let buf = '';
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      buf += chunk.toString();
      cb();
    },
  });
  return { out, text: () => buf };
}

test('following a drain: every host subscribed, each version rendered, no read of the cluster', async () => {
  const agents = ['host-a', 'host-b', 'host-c'].map((h) => new FakeAgent(h));
  const [a] = agents as [FakeAgent];
  const src = source(agents, () => ({}));
  const w = await BatchWatch.open(src);
  try {
    assert.deepEqual(
      agents.map((x) => x.streams),
      [['/v1/events'], ['/v1/events'], ['/v1/events']],
    );
    const seen: BatchView[] = [];
    const first = batch('running', [item('w1', 'pending'), item('p2', 'pending')]);
    const done = w.follow(first, (b) => seen.push(b));
    // Silence between events is not filled with reads.
    await tick(700);
    a.publish(batch('running', [item('w1', 'moving'), item('p2', 'pending')]));
    await tick();
    // Another node's batch is none of this follower's business.
    a.publish({ ...batch('running', [item('x9', 'moving')]), node: 'host-b' });
    await tick();
    a.publish(batch('running', [item('w1', 'moved', 'host-a', 'downtime 40 ms'), item('p2', 'moving', 'host-b')]));
    await tick(300);
    a.publish(
      batch('completed', [
        item('w1', 'moved', 'host-a', 'downtime 40 ms'),
        item('p2', 'moved', 'host-b', 'downtime 55 ms'),
      ]),
    );
    const end = await done;
    assert.equal(end.state, 'completed');
    assert.deepEqual(
      seen.map((b) => `${b.state}: ${b.items.map((i) => i.state).join(',')}`),
      ['running: pending,pending', 'running: moving,pending', 'running: moved,moving', 'completed: moved,moved'],
    );
    assert.equal(src.reads, 0, 'no read of the cluster while events flow');
  } finally {
    w.close();
  }
});

test('a reconnect or a reset reads the cluster once; a batch ended in the read ends the follow', async () => {
  const a = new FakeAgent('host-a');
  let current = batch('running', [item('w1', 'moving')]);
  const src = source([a], () => ({ batches: [current] }));
  const w = await BatchWatch.open(src);
  try {
    const done = w.follow(batch('running', [item('w1', 'pending')]), () => undefined);
    a.publish(current);
    await tick();
    a.drop();
    await until(() => a.streams.length === 2 && src.reads === 1, 'reconnected and read once');
    assert.deepEqual(a.streams, ['/v1/events', '/v1/events?since=1']);
    current = batch('completed', [item('w1', 'moved', 'host-a', 'downtime 9 ms')]);
    a.write('event: reset\ndata: {"lastSeq":99}\n\n');
    const end = await done;
    assert.equal(end.state, 'completed');
    assert.equal(src.reads, 2);
  } finally {
    w.close();
  }
});

test('the leader changes: the new one, subscribed from the start, carries the batch to its end', async () => {
  const [a, b] = [new FakeAgent('host-a'), new FakeAgent('host-b')];
  const src = source([a, b], () => ({}));
  const w = await BatchWatch.open(src);
  try {
    const done = w.follow(batch('running', [item('w1', 'pending')]), () => undefined);
    a.publish(batch('running', [item('w1', 'moving')]));
    await tick();
    // host-a dies (its stream stays down); host-b leads and publishes every batch it reads.
    a.refusals = Infinity;
    a.drop();
    b.publish(batch('completed', [item('w1', 'moved', 'host-a', 'downtime 3 ms')]));
    assert.equal((await done).state, 'completed');
    assert.equal(src.reads, 0);
  } finally {
    w.close();
  }
});

test('a stream that did not open: one read names the leader, whose stream is opened, then read once', async () => {
  const [a, b] = [new FakeAgent('host-a'), new FakeAgent('host-b')];
  b.refusals = 1;
  let current = batch('running', [item('w1', 'moving')]);
  const src = source([a, b], () => ({ leader: 'host-b', batches: [current] }));
  const w = await BatchWatch.open(src);
  try {
    const done = w.follow(batch('running', [item('w1', 'pending')]), () => undefined);
    // Read once (a stream is missing): host-b leads, so its stream is opened, then read once more.
    await until(() => b.isOpen && src.reads === 2, "the leader's stream opened, then one more read");
    current = batch('failed', [item('w1', 'failed', 'host-a', 'no')]);
    b.publish(current);
    assert.equal((await done).state, 'failed');
    assert.equal(src.reads, 2);
    assert.equal(b.streams.length, 2, 'refused once, opened once');
  } finally {
    w.close();
  }
});

test('another batch of the node: the cluster is read once; if ours is gone, the follow says so', async () => {
  const a = new FakeAgent('host-a');
  const later = batch('running', [item('w1', 'pending')], '2026-01-01T11:00:00.000Z');
  const src = source([a], () => ({ batches: [later] }));
  const w = await BatchWatch.open(src);
  try {
    const done = w.follow(batch('running', [item('w1', 'moving')]), () => undefined);
    a.publish(later);
    await assert.rejects(done, { code: 'E_BATCH_GONE' });
    assert.equal(src.reads, 1);
  } finally {
    w.close();
  }
});

test('no stream opens: following is refused before anything starts', async () => {
  const a = new FakeAgent('host-a');
  a.refusals = 1;
  await assert.rejects(BatchWatch.open(source([a], () => ({}))), { code: 'E_AGENT_UNREACHABLE' });
});

test('VM lines: each result once, when it changes; pending VMs say nothing', () => {
  const s = sink();
  const lines = new BatchLines(s.out);
  lines.batch(batch('running', [item('w1', 'pending'), item('p2', 'moving', 'host-b')]));
  lines.batch(batch('running', [item('w1', 'moving'), item('p2', 'moving', 'host-b')]));
  lines.batch(
    batch('failed', [item('w1', 'moved', 'host-a', 'downtime 40 ms'), item('p2', 'failed', null, 'no node to go to')]),
  );
  assert.equal(
    s.text(),
    '  p2: moving → host-b\n' +
      '  w1: moving → host-a\n' +
      '  w1: moved → host-a (downtime 40 ms)\n' +
      '  p2: failed (no node to go to)\n',
  );
});
