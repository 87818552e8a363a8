// The fault matrix's expectations (test/faults/expect.ts): every applicable cell states its
// allowed outcomes, `completed` only with the reason the fault cannot stop the move, and a
// cut migration network allows nothing but a failure.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FAULTS, KINDS, PHASES, notApplicable } from '../faults/harness.js';
import { expected, outcomeProblem } from '../faults/expect.js';

const cells = KINDS.flatMap((k) =>
  PHASES.flatMap((p) => FAULTS.filter((f) => !notApplicable(k, p, f)).map((f) => [k, p, f] as const)),
);

test('every applicable cell allows a stated set; completed only with its reason', () => {
  assert.equal(cells.length, 47);
  for (const [k, p, f] of cells) {
    const e = expected(k, p, f);
    const at = `${k} × ${p} × ${f}`;
    assert.ok(e.outcomes.length > 0, at);
    assert.equal(e.outcomes.includes('completed'), Boolean(e.completes), at);
  }
  const completing = cells.filter(([k, p, f]) => expected(k, p, f).outcomes.includes('completed'));
  assert.deepEqual(
    completing.map(([k, p, f]) => `${k} ${p} ${f}`),
    ['live switching-over cancel', 'shared-nothing switching-over cancel', 'storage switching-over cancel'],
  );
});

test('a cut migration network must fail the move, and its stream is counted per interface', () => {
  for (const [k, p, f] of cells.filter(([, , f]) => f === 'migration-net-cut')) {
    const e = expected(k, p, f);
    assert.deepEqual(e.outcomes, ['failed'], `${k} × ${p}`);
    assert.equal(e.streamOnMigrationNetOnly, true);
  }
  const e = expected('live', 'copying-memory', 'migration-net-cut');
  assert.match(outcomeProblem(e, { state: 'completed', error: null }) ?? '', /allows only failed/);
  const stalled = { code: 'E_MIGRATION_STALLED', message: "Cannot move VM 'x': no data moved for 8 s" };
  assert.equal(outcomeProblem(e, { state: 'failed', error: stalled }), null);
  const noRoute = { code: 'E_MIGRATION_FAILED', message: "Cannot move VM 'x': No route to host" };
  assert.equal(outcomeProblem(e, { state: 'failed', error: noRoute }), null);
  const other = { code: 'E_PREPARE', message: "Cannot move VM 'x': QEMU exited on the destination" };
  assert.match(outcomeProblem(e, { state: 'failed', error: other }) ?? '', /does not name the fault/);
});

test('the other faults: cancelled before switch-over, failed with the named cause', () => {
  const cancel = expected('shared-nothing', 'copying-storage', 'cancel');
  assert.equal(outcomeProblem(cancel, { state: 'cancelled', error: null }), null);
  assert.match(outcomeProblem(cancel, { state: 'completed', error: null }) ?? '', /allows only cancelled/);
  const full = expected('storage', 'copying-storage', 'dest-disk-full');
  const enospc = { code: 'E_MIRROR_FAILED', message: "Cannot move the storage of VM 'x': No space left on device" };
  assert.equal(outcomeProblem(full, { state: 'failed', error: enospc }), null);
  const vague = { code: 'E_MIRROR_FAILED', message: "Cannot move the storage of VM 'x': the copy failed" };
  assert.ok(outcomeProblem(full, { state: 'failed', error: vague }));
  const sa = expected('live', 'preparing', 'source-agent-killed');
  const restarted = { code: 'E_AGENT_RESTARTED', message: "Cannot finish the move of VM 'x': its agent restarted" };
  assert.equal(outcomeProblem(sa, { state: 'failed', error: restarted }), null);
  assert.ok(outcomeProblem(sa, { state: 'failed', error: { ...restarted, code: 'E_SWITCHOVER' } }));
  assert.match(outcomeProblem(sa, { state: 'failed', error: { code: 'E_X', message: 'short' } }) ?? '', /name/);
});
