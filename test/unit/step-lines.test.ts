// `migration show`'s table of a move's steps: in the order they began, each named by its host.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IncomingView } from '../../src/api/peer-actions.js';
import { stepLines } from '../../src/cli/render/steps.js';

test('steps print in the order they began, with the host that ran each, and a failure marked', () => {
  const lines = stepLines(
    [
      { name: 'prepare', on: 'source', atMs: 20.04, ms: 121.2 },
      { name: 'qemu', on: 'destination', atMs: 37.2, ms: 76 },
      { name: 'compare', on: 'source', atMs: 7.1, ms: 4.94 },
      { name: 'migrate', on: 'source', atMs: 141, ms: 437.4, failed: true },
    ],
    { source: 'host-a', destination: 'host-b' },
  );
  assert.deepEqual(lines, [
    'steps (ms after the request, host, step, time):',
    '  +7.1  host-a  compare  4.9 ms',
    '   +20  host-a  prepare  121 ms',
    '   +37  host-b  qemu     76 ms',
    '  +141  host-a  migrate  437 ms (failed)',
  ]);
  assert.deepEqual(stepLines(undefined, { source: 'a', destination: 'b' }), []);
});

test("a destination's step times are checked: a plain name, a bounded time (they reach the admin's terminal)", () => {
  const view = (name: string, ms = 1) => ({
    jobId: 'j',
    vm: 'v',
    state: 'prepared',
    uri: null,
    tlsHostname: 'b',
    reason: null,
    nbd: null,
    steps: [{ name, atMs: 0, ms }],
  });
  assert.equal(IncomingView.safeParse(view('finish-run')).success, true);
  for (const bad of ['\u001b]0;owned\u0007', 'Qemu', 'a b', '', 'x'.repeat(41)])
    assert.equal(IncomingView.safeParse(view(bad)).success, false, JSON.stringify(bad));
  assert.equal(IncomingView.safeParse(view('qemu', -1)).success, false);
  assert.equal(IncomingView.safeParse(view('qemu', 1e12)).success, false);
});
