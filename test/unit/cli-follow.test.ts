// The CLI's move follower and its renderers, with a fake agent client: one event stream in,
// renderer calls out. Proves that following reads the record only when events may have been
// missed (never a polling loop), and what each Ctrl-C press does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { actions } from '../../src/cli/actions.js'; // what the CLI calls: the actions' routes
import type { Action } from '../../src/api/action.js';
import type { AgentClient } from '../../src/api/client.js';
import { FerryError } from '../../src/errors.js';
import { MigrationRecord, type MigrationState } from '../../src/migration/schemas.js';
import { MigrationWatch, isNewer } from '../../src/cli/follow.js';
import type { InterruptSource } from '../../src/cli/interrupt.js';
import type { MoveRenderer } from '../../src/cli/render/index.js';
import { LinesRenderer } from '../../src/cli/render/lines.js';
import { JsonRenderer } from '../../src/cli/render/json.js';
import { BarRenderer } from '../../src/cli/render/bar.js';
import { describe as describeRecord, newLogEntries } from '../../src/cli/render/describe.js';

const T0 = Date.parse('2025-01-01T10:00:00.000Z');
const iso = (ms: number): string => new Date(T0 + ms).toISOString();

/** A migration record as an agent sends it; `log` is the times (ms after T0) of its log entries. */
function rec(state: MigrationState, progress: number, log: number[], id = 'm1'): MigrationRecord {
  return MigrationRecord.parse({
    id,
    vm: 'web1',
    kind: 'live',
    source: 'host-a',
    destination: 'host-b',
    destinationEndpoint: null,
    state,
    priority: 'normal',
    queuePosition: null,
    progress,
    etaSeconds: state === 'copying-memory' ? 3 : null,
    verdict: state === 'copying-memory' ? 'converging' : null,
    downtimeMs: null,
    totalMs: null,
    bytesTransferred: Math.round(progress * 1e8),
    passes: 1,
    rate: { transferBps: 50 * 1024 * 1024, dirtyBps: 1024 * 1024 },
    remainingBytes: null,
    downtimeLimitMs: 300,
    throttlePct: 0,
    policy: {},
    options: {},
    error: null,
    createdAt: iso(0),
    startedAt: iso(0),
    finishedAt: null,
    events: log.map((ms, i) => ({ at: iso(ms), message: `step ${i}` })),
    disks: [],
    incompatibilities: [],
  });
}

/** An agent client whose event stream the test writes to, counting every request made. */
class FakeAgent {
  readonly host = 'host-a';
  readonly streams: string[] = [];
  readonly calls: string[] = [];
  /** What migrationShow / migrationCancel answer. */
  show: () => MigrationRecord = () => rec('copying-memory', 0.5, [0]);
  cancel: () => MigrationRecord | Promise<MigrationRecord> = () => rec('copying-memory', 0.5, [0]);
  private seq = 0;
  private open: { onData: (chunk: string) => void; end: () => void } | null = null;

  stream(url: string, onData: (chunk: string) => void, opts: { signal?: AbortSignal; onOpen?: () => void } = {}) {
    this.streams.push(url);
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

  async call(action: Action, _input: unknown, _opts?: unknown): Promise<MigrationRecord> {
    await Promise.resolve();
    if (action === actions.migrationShow) {
      this.calls.push('show');
      return this.show();
    }
    if (action === actions.migrationCancel) {
      this.calls.push('cancel');
      return this.cancel();
    }
    throw new Error(`unexpected call ${action.path}`);
  }

  /** Publishes a migration event on the open stream. */
  publish(r: MigrationRecord): void {
    const e = { type: 'migration', vm: r.vm, migration: r, seq: ++this.seq, at: new Date().toISOString() };
    this.write(`id: ${e.seq}\nevent: ferry\ndata: ${JSON.stringify(e)}\n\n`);
  }

  write(frame: string): void {
    assert.ok(this.open, 'the event stream is open');
    this.open.onData(frame);
  }

  /** The agent drops the connection (the client reconnects with its last id). */
  drop(): void {
    this.open?.end();
  }

  get client(): AgentClient {
    return this as unknown as AgentClient;
  }
}

/** Records what a renderer was given. */
class SpyRenderer implements MoveRenderer {
  readonly records: MigrationRecord[] = [];
  readonly notes: string[] = [];
  stopped = 0;
  record(r: MigrationRecord): void {
    this.records.push(r);
  }
  note(text: string): void {
    this.notes.push(text);
  }
  stop(): void {
    this.stopped++;
  }
}

class FakeInterrupts implements InterruptSource {
  presses = 0;
  private fns = new Set<(n: number) => void>();
  listen(fn: (n: number) => void): () => void {
    this.fns.add(fn);
    return () => this.fns.delete(fn);
  }
  press(): void {
    this.presses++;
    for (const f of this.fns) f(this.presses);
  }
}

const tick = (ms = 5): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits until `cond` holds (the follower works on the event loop). */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 400 && !cond(); i++) await tick();
  assert.ok(cond(), what);
}

test('following a move: one event stream, every event rendered, no read of the record', async () => {
  const agent = new FakeAgent();
  const watch = await MigrationWatch.open(agent.client);
  try {
    const r = new SpyRenderer();
    const done = watch.follow('m1', { initial: rec('queued', 0, [0]), renderer: r, firstInterrupt: 'cancel' });
    // Silence between events is not filled with reads: no request while nothing happens.
    await tick(700);
    // Events that arrive together are rendered as one (the newest); these come apart.
    agent.publish(rec('copying-memory', 0.3, [0, 10]));
    await tick();
    agent.publish(rec('copying-memory', 0.3, [0, 10], 'other-move'));
    await tick();
    agent.publish(rec('copying-memory', 0.6, [0, 10]));
    await tick(400);
    agent.publish(rec('completed', 1, [0, 10, 20]));
    const out = await done;
    assert.equal(out.kind, 'ended');
    assert.equal(out.record.state, 'completed');
    assert.deepEqual(
      r.records.map((x) => [x.id, x.state, x.progress]),
      [
        ['m1', 'queued', 0],
        ['m1', 'copying-memory', 0.3],
        ['m1', 'copying-memory', 0.6],
        ['m1', 'completed', 1],
      ],
    );
    assert.deepEqual(agent.streams, ['/v1/events']);
    assert.deepEqual(agent.calls, [], 'no GET of the migration while the stream delivers');
  } finally {
    watch.close();
  }
});

test("another move's events and other event types are skipped before the schema check", async () => {
  const agent = new FakeAgent();
  const watch = await MigrationWatch.open(agent.client);
  try {
    const r = new SpyRenderer();
    const done = watch.follow('m1', { initial: rec('queued', 0, [0]), renderer: r, firstInterrupt: 'cancel' });
    // Neither would pass the schema: checked, the first would make the follower read the record.
    const frame = (seq: number, e: unknown): string => `id: ${seq}\nevent: ferry\ndata: ${JSON.stringify(e)}\n\n`;
    agent.write(frame(100, { type: 'migration', migration: { id: 'other-move', state: 'from-a-newer-agent' } }));
    agent.write(frame(101, { type: 'vm.state', vm: 'web1' }));
    await tick(50);
    agent.publish(rec('completed', 1, [0, 10]));
    assert.equal((await done).record.state, 'completed');
    assert.deepEqual(agent.calls, [], 'no read of the record for events of other moves');
    assert.deepEqual(
      r.records.map((x) => x.state),
      ['queued', 'completed'],
    );
  } finally {
    watch.close();
  }
});

test('migration wait: the record is read once after subscribing, then only events', async () => {
  const agent = new FakeAgent();
  agent.show = () => rec('copying-memory', 0.4, [0, 5]);
  const watch = await MigrationWatch.open(agent.client);
  try {
    const r = new SpyRenderer();
    const done = watch.follow('m1', { renderer: r, firstInterrupt: 'detach' });
    await until(() => r.records.length === 1, 'the first read is rendered');
    agent.publish(rec('switching-over', 0.99, [0, 5, 9]));
    agent.publish(rec('completed', 1, [0, 5, 9, 12]));
    assert.equal((await done).record.state, 'completed');
    assert.deepEqual(agent.calls, ['show']);
  } finally {
    watch.close();
  }
});

test('a dropped stream resumes from the last event id and reads the record once; so does a reset', async () => {
  const agent = new FakeAgent();
  const watch = await MigrationWatch.open(agent.client);
  try {
    const r = new SpyRenderer();
    const done = watch.follow('m1', { initial: rec('preparing', 0, [0]), renderer: r, firstInterrupt: 'cancel' });
    agent.publish(rec('copying-memory', 0.2, [0, 1]));
    await tick();
    agent.show = () => rec('copying-memory', 0.5, [0, 1]);
    agent.drop();
    await until(() => agent.streams.length === 2 && agent.calls.length === 1, 'reconnected and read once');
    assert.deepEqual(agent.streams, ['/v1/events', '/v1/events?since=1']);
    await until(() => r.records.at(-1)?.progress === 0.5, 'the read is rendered');
    agent.show = () => rec('copying-memory', 0.7, [0, 1]);
    agent.write('event: reset\ndata: {"lastSeq":99}\n\n');
    await until(() => agent.calls.length === 2, 'read after the reset');
    // An event older than what is shown (the same log, fewer entries) is not rendered.
    agent.publish(rec('preparing', 0, [0]));
    agent.publish(rec('completed', 1, [0, 1, 2]));
    const out = await done;
    assert.equal(out.record.state, 'completed');
    assert.ok(!r.records.slice(1).some((x) => x.state === 'preparing'), 'no step back');
    assert.deepEqual(agent.calls, ['show', 'show']);
  } finally {
    watch.close();
  }
});

test('Ctrl-C before the switch-over cancels the move and follows the rollback to its end', async () => {
  const agent = new FakeAgent();
  const ints = new FakeInterrupts();
  const watch = await MigrationWatch.open(agent.client);
  try {
    const r = new SpyRenderer();
    const done = watch.follow('m1', {
      initial: rec('copying-memory', 0.4, [0]),
      renderer: r,
      interrupts: ints,
      firstInterrupt: 'cancel',
    });
    await tick();
    ints.press();
    await until(() => agent.calls.includes('cancel'), 'the cancel is sent');
    assert.match(r.notes[0] ?? '', /cancelling the move of VM 'web1'/);
    agent.publish(rec('cancelled', 0.4, [0, 7]));
    const out = await done;
    assert.equal(out.kind, 'ended');
    assert.equal(out.record.state, 'cancelled');
    assert.deepEqual(agent.calls, ['cancel']);
  } finally {
    watch.close();
  }
});

test('Ctrl-C past the switch-over does not cancel; the next press detaches and the move goes on', async () => {
  const agent = new FakeAgent();
  const ints = new FakeInterrupts();
  const watch = await MigrationWatch.open(agent.client);
  try {
    const r = new SpyRenderer();
    const done = watch.follow('m1', {
      initial: rec('switching-over', 0.99, [0]),
      renderer: r,
      interrupts: ints,
      firstInterrupt: 'cancel',
    });
    await tick();
    ints.press();
    await until(() => r.notes.length === 1, 'a note says why not');
    assert.match(r.notes[0] ?? '', /past the point where it can be cancelled/);
    ints.press();
    const out = await done;
    assert.equal(out.kind, 'detached');
    assert.equal(out.cancelRequested, false);
    assert.deepEqual(agent.calls, []);
  } finally {
    watch.close();
  }
});

test('a press made while the move was being created counts; with firstInterrupt detach it only detaches', async () => {
  const agent = new FakeAgent();
  const ints = new FakeInterrupts();
  ints.presses = 1;
  const watch = await MigrationWatch.open(agent.client);
  try {
    const out = await watch.follow('m1', {
      initial: rec('copying-memory', 0.1, [0]),
      renderer: new SpyRenderer(),
      interrupts: ints,
      firstInterrupt: 'detach',
    });
    assert.equal(out.kind, 'detached');
    assert.deepEqual(agent.calls, []);
  } finally {
    watch.close();
  }
});

test('a migration the agent does not know ends the follow with its error', async () => {
  const agent = new FakeAgent();
  agent.show = () => {
    throw new FerryError('E_MIGRATION_NOT_FOUND', 'Cannot find migration m1');
  };
  const watch = await MigrationWatch.open(agent.client);
  try {
    await assert.rejects(watch.follow('m1', { renderer: new SpyRenderer(), firstInterrupt: 'detach' }), {
      code: 'E_MIGRATION_NOT_FOUND',
    });
  } finally {
    watch.close();
  }
});

test('isNewer: a later log or more entries is newer; an ended record is final', () => {
  const a = rec('copying-memory', 0.3, [0, 10]);
  assert.equal(isNewer(rec('copying-memory', 0.4, [0, 10]), a), true, 'same log: progress updates pass');
  assert.equal(isNewer(rec('preparing', 0, [0]), a), false);
  assert.equal(isNewer(rec('completed', 1, [0, 10, 20]), a), true);
  assert.equal(isNewer(a, rec('failed', 0.3, [0])), false);
});

/** Collects what a renderer writes. */
function sink(tty = false): { out: NodeJS.WriteStream; text: () => string } {
  let buf = '';
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      buf += chunk.toString();
      cb();
    },
  });
  Object.assign(w, { isTTY: tty, columns: 120, cursorTo: () => true, clearLine: () => true, moveCursor: () => true });
  return { out: w as unknown as NodeJS.WriteStream, text: () => buf };
}

test('lines renderer: each log entry once, a progress line when the phase changes', () => {
  const s = sink();
  const r = new LinesRenderer(s.out);
  r.record(rec('preparing', 0, [0]));
  r.record(rec('copying-memory', 0.2, [0, 1000]));
  r.record(rec('copying-memory', 0.25, [0, 1000])); // within 2 s, same phase: no new line
  r.record(rec('completed', 1, [0, 1000, 2000]));
  r.note('a note');
  const lines = s.text().trimEnd().split('\n');
  assert.deepEqual(
    lines.filter((l) => / step \d$/.test(l)),
    ['10:00:00 step 0', '10:00:01 step 1', '10:00:02 step 2'],
  );
  const progress = lines.filter((l) => / \d+%/.test(l)).map((l) => l.slice(9));
  assert.deepEqual(progress, ['preparing  0%', describeRecord(rec('copying-memory', 0.2, [])), 'completed  100%']);
  assert.match(lines.at(-1) ?? '', /^\d\d:\d\d:\d\d a note$/);
});

test('json renderer: one JSON object per line, unchanged records not repeated, new log entries only', () => {
  const s = sink();
  const r = new JsonRenderer(s.out);
  r.record(rec('copying-memory', 0.2, [0]));
  r.record(rec('copying-memory', 0.2, [0]));
  r.record(rec('completed', 1, [0, 5]));
  r.note('detached');
  const objs = s
    .text()
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(objs.length, 3);
  assert.deepEqual(
    objs.map((o) => [o.type, o.state ?? o.message, o.log]),
    [
      ['migration', 'copying-memory', ['step 0']],
      ['migration', 'completed', ['step 1']],
      ['note', 'detached', undefined],
    ],
  );
  assert.equal(objs[0]?.etaSeconds, 3);
});

test('bar renderer: stop shows the cursor again and leaves one summary line', () => {
  const s = sink(true);
  const r = new BarRenderer(s.out);
  const listeners = process.listenerCount('SIGTERM');
  r.record(rec('copying-memory', 0.5, [0]));
  r.note('Ctrl-C: cancelling');
  r.record(rec('completed', 1, [0, 1]));
  assert.equal(process.listenerCount('SIGTERM'), listeners + 1, 'SIGTERM would show the cursor again');
  r.stop();
  assert.equal(process.listenerCount('SIGTERM'), listeners);
  const t = s.text();
  assert.ok(t.includes('\x1b[?25l'), 'the bar hid the cursor');
  assert.ok(t.lastIndexOf('\x1b[?25h') > t.lastIndexOf('\x1b[?25l'), 'the cursor is shown again');
  assert.ok(t.includes('Ctrl-C: cancelling\n'));
  assert.ok(t.endsWith('web1 → host-b: completed  100%\n'), JSON.stringify(t.slice(-80)));
});

test('newLogEntries: entries after the last shown one; all newer ones once it left the log', () => {
  const r = rec('copying-memory', 0.2, [0, 1, 2]);
  assert.deepEqual(
    newLogEntries(r, { at: iso(1), message: 'step 1' }).map((e) => e.message),
    ['step 2'],
  );
  assert.equal(newLogEntries(r, null).length, 3);
  assert.deepEqual(
    newLogEntries(r, { at: iso(0), message: 'gone' }).map((e) => e.message),
    ['step 1', 'step 2'],
  );
});
