// The move runner with a fake host: every step failing at every point leaves the journal, the
// undo calls and the final state as the phase table (src/migration/phases.ts) says. No QEMU.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Job } from '../../src/migration/job.js';
import type { JournalEntry } from '../../src/migration/journal.js';
import { PHASES, canTransition, isCancellable } from '../../src/migration/phases.js';
import { StepRunner, startedFromJournal, undoSteps, type MoveKind, type Step } from '../../src/migration/runner.js';
import { MIGRATION_STATES, type MigrationState } from '../../src/migration/schemas.js';

interface Ctx {
  calls: string[];
  /** Step name → where it fails: before it records anything, or after. */
  failAt: Map<string, 'start' | 'after-record'>;
  resolveAs: 'completed' | 'undo' | 'failed';
}

function step(name: string, phase: MigrationState, withUndo = true): Step<Ctx> {
  return {
    name,
    phase,
    run(ctx, s) {
      ctx.calls.push(`run ${name}`);
      if (ctx.failAt.get(name) === 'start') return Promise.reject(new Error(`${name} failed`));
      s.record({ made: name });
      if (ctx.failAt.get(name) === 'after-record') return Promise.reject(new Error(`${name} failed late`));
      return Promise.resolve({ made: name, done: true });
    },
    ...(withUndo
      ? {
          undo(ctx: Ctx, data: Record<string, unknown>) {
            ctx.calls.push(`undo ${name} ${typeof data.made === 'string' ? data.made : '-'}`);
            return Promise.resolve();
          },
        }
      : {}),
    release(ctx) {
      ctx.calls.push(`release ${name}`);
    },
  };
}

const kind: MoveKind<Ctx> = {
  name: 'test',
  steps: [
    step('queue', 'queued'),
    step('compare', 'preparing', false),
    step('prepare', 'preparing'),
    step('copy', 'copying-storage'),
    step('migrate', 'copying-memory'),
    step('switch', 'switching-over'),
    step('confirm', 'switching-over'),
  ],
  resolve(ctx) {
    ctx.calls.push(`resolve ${ctx.resolveAs}`);
    return Promise.resolve(ctx.resolveAs);
  },
};

function newJob(journal: JournalEntry[]): Job {
  return new Job(
    {
      vm: 'v',
      kind: 'live',
      source: 'a',
      destination: 'b',
      policy: { maxDowntimeMs: 300, priority: 'normal', allowPostcopy: false },
      options: { includeStorage: false, retainSource: false },
    },
    () => undefined,
    () => undefined,
    (_id, e) => journal.push(e),
  );
}

async function runWith(failAt: Ctx['failAt'], resolveAs: Ctx['resolveAs'] = 'undo') {
  const journal: JournalEntry[] = [];
  const job = newJob(journal);
  const ctx: Ctx = { calls: [], failAt, resolveAs };
  const out = await new StepRunner(kind, ctx, job).run();
  return { out, ctx, journal, job };
}

test('the phase table: every state is covered, terminal states lead nowhere, cancel only before switch-over', () => {
  for (const s of MIGRATION_STATES) assert.ok(PHASES[s], s);
  for (const s of ['completed', 'failed', 'cancelled'] as const) assert.deepEqual(PHASES[s].next, []);
  assert.deepEqual(
    MIGRATION_STATES.filter((s) => isCancellable(s)),
    ['queued', 'preparing', 'copying-storage', 'copying-memory'],
  );
  for (const s of MIGRATION_STATES) {
    for (const n of PHASES[s].next) assert.ok(MIGRATION_STATES.includes(n), `${s} → ${n}`);
  }
  assert.equal(canTransition('switching-over', 'copying-memory'), false);
  assert.equal(canTransition('copying-memory', 'post-copy'), true);
  assert.equal(PHASES['post-copy'].cancel, false);
});

test('every step runs, in order, journalled begin and done; releases run newest first', async () => {
  const { out, ctx, journal } = await runWith(new Map());
  assert.equal(out.result, 'completed');
  const names = kind.steps.map((s) => s.name);
  assert.deepEqual(
    ctx.calls.filter((c) => c.startsWith('run ')),
    names.map((n) => `run ${n}`),
  );
  assert.deepEqual(
    ctx.calls.filter((c) => c.startsWith('release ')),
    [...names].reverse().map((n) => `release ${n}`),
  );
  for (const n of names) {
    const ev = journal.filter((e) => e.step === n).map((e) => e.event);
    assert.deepEqual(ev, ['begin', 'data', 'done'], n);
  }
  assert.deepEqual(
    journal.map((e) => e.seq),
    journal.map((_, i) => i + 1),
  );
});

for (const failing of kind.steps) {
  for (const where of ['start', 'after-record'] as const) {
    test(`a failure in '${failing.name}' (${where}) ends as the table says for ${failing.phase}`, async () => {
      const { out, ctx, journal, job } = await runWith(new Map([[failing.name, where]]));
      const idx = kind.steps.indexOf(failing);
      const started = kind.steps.slice(0, idx + 1);
      const rule = PHASES[failing.phase].onFailure;
      assert.equal(job.phase, failing.phase, 'the failure happened in the step’s phase');
      assert.ok(journal.some((e) => e.step === failing.name && e.event === 'failed'));
      if (rule === 'undo') {
        assert.equal(out.result, 'undone');
        const undos = ctx.calls.filter((c) => c.startsWith('undo '));
        const expect = [...started]
          .reverse()
          .filter((s) => s.undo !== undefined)
          .map((s) => `undo ${s.name} ${s === failing && where === 'start' ? '-' : s.name}`);
        assert.deepEqual(undos, expect, 'every step that began is undone, newest first, with what it recorded');
        for (const s of started.filter((x) => x.undo !== undefined)) {
          assert.ok(
            journal.some((e) => e.step === s.name && e.event === 'undone'),
            `${s.name} journalled undone`,
          );
        }
      } else {
        assert.equal(rule, 'resolve');
        assert.ok(ctx.calls.includes('resolve undo'));
        // resolve said 'undo': the same undo as before switch-over.
        assert.ok(ctx.calls.includes('undo prepare prepare'));
      }
      // Releases always run, for every step that began, newest first.
      assert.deepEqual(
        ctx.calls.filter((c) => c.startsWith('release ')),
        [...started].reverse().map((s) => `release ${s.name}`),
      );
      const lastUndo = ctx.calls.reduce((at, c, i) => (c.startsWith('undo ') ? i : at), -1);
      const firstRelease = ctx.calls.findIndex((c) => c.startsWith('release '));
      assert.ok(firstRelease > lastUndo, 'releases come after every undo');
    });
  }
}

test("in switch-over, resolve decides: 'completed' undoes nothing, 'failed' undoes nothing", async () => {
  for (const resolveAs of ['completed', 'failed'] as const) {
    const { out, ctx } = await runWith(new Map([['confirm', 'start']]), resolveAs);
    assert.equal(out.result, resolveAs === 'completed' ? 'completed' : 'failed');
    assert.deepEqual(
      ctx.calls.filter((c) => c.startsWith('undo ')),
      [],
    );
  }
});

test('a failure in post-copy is reported, never undone (the guest runs on the destination)', async () => {
  const postcopy: MoveKind<Ctx> = {
    name: 'pc',
    steps: [step('prepare', 'preparing'), step('migrate', 'copying-memory'), step('tail', 'post-copy')],
  };
  const journal: JournalEntry[] = [];
  const job = newJob(journal);
  const ctx: Ctx = { calls: [], failAt: new Map([['tail', 'start']]), resolveAs: 'undo' };
  const out = await new StepRunner(postcopy, ctx, job).run();
  assert.equal(out.result, 'failed');
  assert.deepEqual(
    ctx.calls.filter((c) => c.startsWith('undo ')),
    [],
  );
});

test('cancel: allowed before switch-over (the steps see the signal), refused in switch-over and post-copy', () => {
  const journal: JournalEntry[] = [];
  const job = newJob(journal);
  job.enter('preparing');
  job.enter('copying-memory');
  job.cancel('test');
  assert.equal(job.signal.aborted, true);
  const j2 = newJob(journal);
  j2.enter('preparing');
  j2.enter('copying-memory');
  j2.enter('switching-over');
  assert.throws(() => {
    j2.cancel('test');
  }, /E_CANNOT_CANCEL|switching over/);
  const j3 = newJob(journal);
  j3.enter('preparing');
  j3.enter('copying-memory');
  j3.enter('post-copy');
  assert.throws(() => {
    j3.cancel('test');
  }, /post-copy/);
  assert.throws(() => {
    j3.enter('copying-memory');
  }, /not in the table/);
});

test('recovery reads the same journal: cut after any entry, it undoes exactly the steps that began', async () => {
  const { journal } = await runWith(new Map());
  for (let cut = 1; cut <= journal.length; cut++) {
    const entries = journal.slice(0, cut);
    const started = startedFromJournal(kind, entries);
    const began = [...new Set(entries.filter((e) => e.event === 'begin').map((e) => e.step))];
    assert.deepEqual(
      started.map((s) => s.step.name),
      began,
    );
    const ctx: Ctx = { calls: [], failAt: new Map(), resolveAs: 'undo' };
    const log: JournalEntry[] = [];
    await undoSteps(
      kind,
      ctx,
      started,
      { log: () => undefined, journal: (e) => log.push({ ...e, seq: 0, at: '' }) },
      { signal: AbortSignal.timeout(1000), log: () => undefined },
    );
    const last = entries.at(-1);
    const expect = [...began]
      .reverse()
      .filter((n) => kind.steps.find((s) => s.name === n)?.undo !== undefined)
      .map((n) => {
        // A step cut right after 'begin' recorded nothing yet.
        const recorded = entries.some((e) => e.step === n && e.event !== 'begin');
        return `undo ${n} ${recorded ? n : '-'}`;
      });
    assert.deepEqual(ctx.calls, expect, `cut after ${last?.step ?? ''} ${last?.event ?? ''}`);
  }
});

test('an undone step is not undone twice after a restart', () => {
  const entries: JournalEntry[] = [
    { seq: 1, at: '', step: 'queue', event: 'begin' },
    { seq: 2, at: '', step: 'queue', event: 'done', data: { made: 'queue' } },
    { seq: 3, at: '', step: 'prepare', event: 'begin' },
    { seq: 4, at: '', step: 'prepare', event: 'done', data: { made: 'prepare' } },
    { seq: 5, at: '', step: 'prepare', event: 'undone' },
  ];
  assert.deepEqual(
    startedFromJournal(kind, entries).map((s) => s.step.name),
    ['queue'],
  );
});

test('undo runs every step even when the journal cannot be written (no QEMU, file or slot left)', async () => {
  const { journal } = await runWith(new Map());
  const started = startedFromJournal(
    kind,
    journal.filter((e) => e.step !== 'switch' && e.step !== 'confirm'),
  );
  const ctx: Ctx = { calls: [], failAt: new Map(), resolveAs: 'undo' };
  const logged: string[] = [];
  await undoSteps(
    kind,
    ctx,
    started,
    {
      log: (m) => logged.push(m),
      journal: () => {
        throw new Error('UNIQUE constraint failed: move_journal.move_id, move_journal.seq');
      },
    },
    { signal: AbortSignal.timeout(1000), log: () => undefined },
  );
  assert.deepEqual(ctx.calls, ['undo migrate migrate', 'undo copy copy', 'undo prepare prepare', 'undo queue queue']);
  assert.ok(logged.some((m) => m.includes('cannot journal')));
});

test("each step's time goes into the record, a failure marked; the destination's placed from its Prepare", async () => {
  const { job } = await runWith(new Map([['migrate', 'after-record']]));
  const steps = job.record.steps ?? [];
  assert.deepEqual(
    steps.map((s) => [s.name, s.on, s.failed ?? false]),
    [
      ['queue', 'source', false],
      ['compare', 'source', false],
      ['prepare', 'source', false],
      ['copy', 'source', false],
      ['migrate', 'source', true],
    ],
  );
  for (const s of steps) assert.ok(s.ms >= 0 && s.atMs >= 0, JSON.stringify(s));
  for (let i = 1; i < steps.length; i++) assert.ok(steps[i]!.atMs >= steps[i - 1]!.atMs, 'in the order they ran');

  // The destination times its steps from its request's arrival; later answers list them all again.
  const j = newJob([]);
  const sentAt = performance.now() + 100; // the Prepare went out 100 ms after the record was made
  j.destinationSteps([{ name: 'qemu', atMs: 5, ms: 50 }], sentAt);
  j.destinationSteps([
    { name: 'qemu', atMs: 5, ms: 50 },
    { name: 'finish-run', atMs: 400, ms: 3.04 },
  ]);
  const d = (j.record.steps ?? []).map((s) => ({ ...s, atMs: Math.round(s.atMs / 50) * 50 }));
  assert.deepEqual(d, [
    { name: 'qemu', on: 'destination', atMs: 100, ms: 50 },
    { name: 'finish-run', on: 'destination', atMs: 500, ms: 3 },
  ]);
  // A peer's answer is checked nowhere else: a malformed step is left out, the others kept.
  const h = newJob([]);
  h.destinationSteps(
    [
      { name: '\u001b[2Jqemu', atMs: 1, ms: 1 },
      { name: 'qemu', atMs: 1, ms: -5 },
      'junk',
      { name: 'listen', atMs: 2, ms: 3 },
    ] as unknown as Parameters<Job['destinationSteps']>[0],
    performance.now(),
  );
  assert.deepEqual(
    (h.record.steps ?? []).map((x) => x.name),
    ['listen'],
  );
  // Without a Prepare seen (a recovered job), a destination's steps cannot be placed: none added.
  const k = newJob([]);
  k.destinationSteps([{ name: 'finish-run', atMs: 1, ms: 1 }]);
  assert.equal(k.record.steps, undefined);
});
