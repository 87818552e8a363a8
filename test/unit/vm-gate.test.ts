import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as tick } from 'node:timers/promises';
import { GATE_RULES, VM_OPS, VmGate, ruleFor, type GatedOp, type PhaseKind } from '../../src/agent/vm-gate.js';
import { FerryError } from '../../src/errors.js';

const GATED: GatedOp[] = VM_OPS.filter((op): op is GatedOp => op !== 'move');
const OP_PHASES: PhaseKind[] = [
  'creating',
  'starting',
  'stopping',
  'pausing',
  'resuming',
  'removing',
  'configuring',
  'checkpointing',
];

/** A promise and the function that settles it. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve = (): void => undefined;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

function isBusy(err: unknown): boolean {
  return err instanceof FerryError && err.code === 'E_VM_BUSY';
}

test('the table: idle runs everything; a running operation queues the others and refuses a move', () => {
  for (const op of VM_OPS) assert.equal(GATE_RULES.idle[op], 'run', `idle/${op}`);
  for (const phase of OP_PHASES) {
    for (const op of GATED) assert.equal(GATE_RULES[phase][op], 'wait', `${phase}/${op}`);
    assert.equal(GATE_RULES[phase].move, 'refuse', `${phase}/move`);
  }
});

test('the table: a VM held by a move refuses every operation, another move included', () => {
  for (const op of VM_OPS) assert.equal(GATE_RULES.migrating[op], 'refuse', `migrating/${op}`);
  assert.equal(ruleFor('migrating:j1', 'start'), 'refuse');
  assert.equal(ruleFor('starting', 'stop'), 'wait');
  assert.equal(ruleFor('idle', 'move'), 'run');
});

test('operations on one VM run one at a time, in order; other VMs do not wait', async () => {
  const gate = new VmGate();
  const order: string[] = [];
  const first = deferred();
  const a = gate.run('vm1', 'start', async () => {
    order.push('start:begin');
    assert.equal(gate.phase('vm1'), 'starting');
    await first.promise;
    order.push('start:end');
  });
  const b = gate.run('vm1', 'stop', () => {
    order.push('stop');
    assert.equal(gate.phase('vm1'), 'stopping');
    return Promise.resolve();
  });
  await gate.run('vm2', 'pause', () => {
    order.push('vm2:pause');
    return Promise.resolve();
  });
  await tick();
  assert.deepEqual(order, ['start:begin', 'vm2:pause']);
  first.resolve();
  await Promise.all([a, b]);
  assert.deepEqual(order, ['start:begin', 'vm2:pause', 'start:end', 'stop']);
  assert.equal(gate.phase('vm1'), 'idle');
});

test('a failing operation frees the gate for the next one and keeps its own error', async () => {
  const gate = new VmGate();
  const failing = gate.run('vm1', 'start', () => Promise.reject(new Error('boom')));
  const next = gate.run('vm1', 'remove', () => Promise.resolve('removed'));
  await assert.rejects(failing, /boom/);
  assert.equal(await next, 'removed');
  assert.equal(gate.phase('vm1'), 'idle');
});

test('a move holds the VM: every other operation is refused (E_VM_BUSY names the move) until released', async () => {
  const gate = new VmGate();
  gate.hold('vm1', 'job-1');
  assert.equal(gate.phase('vm1'), 'migrating:job-1');
  assert.equal(gate.movingJob('vm1'), 'job-1');
  for (const op of GATED) {
    await assert.rejects(
      gate.run('vm1', op, () => Promise.resolve()),
      (err: unknown) => isBusy(err) && /migrating \(migration job-1\)/.test((err as Error).message),
      op,
    );
  }
  assert.throws(() => gate.hold('vm1', 'job-2'), isBusy);
  gate.release('vm1', 'job-2'); // not the holder: nothing changes
  assert.equal(gate.movingJob('vm1'), 'job-1');
  gate.release('vm1', 'job-1');
  assert.equal(gate.phase('vm1'), 'idle');
  assert.equal(gate.movingJob('vm1'), null);
  await gate.run('vm1', 'start', () => Promise.resolve());
});

test('a move cannot take a VM while an operation runs on it', async () => {
  const gate = new VmGate();
  const d = deferred();
  const stop = gate.run('vm1', 'stop', () => d.promise);
  await tick();
  assert.throws(
    () => gate.hold('vm1', 'job-1'),
    (err: unknown) => isBusy(err) && /it is stopping/.test((err as Error).message),
  );
  d.resolve();
  await stop;
  gate.hold('vm1', 'job-1');
  assert.equal(gate.movingJob('vm1'), 'job-1');
});

test('an operation not yet begun is refused when a move took the VM before its turn', async () => {
  const gate = new VmGate();
  // Accepted (the VM was idle) but not begun: its turn comes on a later tick.
  const pause = gate.run('vm1', 'pause', () => Promise.resolve('paused'));
  gate.hold('vm1', 'job-9');
  await assert.rejects(pause, isBusy);
  assert.equal(gate.movingJob('vm1'), 'job-9');
  gate.release('vm1', 'job-9');
  assert.equal(gate.phase('vm1'), 'idle');
});

test("a VM that left ends its move's hold: one of that name may arrive before the move ends", async () => {
  const gate = new VmGate();
  gate.hold('vm1', 'job-1');
  gate.vacate('vm1');
  assert.equal(gate.phase('vm1'), 'idle');
  await gate.run('vm1', 'create', () => Promise.resolve());
  gate.hold('vm1', 'job-2');
  gate.release('vm1', 'job-1'); // the first move's late release leaves the second alone
  assert.equal(gate.movingJob('vm1'), 'job-2');
  gate.vacate('vm1');
  gate.vacate('vm1');
  assert.equal(gate.phase('vm1'), 'idle');
});
