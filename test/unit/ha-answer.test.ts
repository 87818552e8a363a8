// Which failed HA-start calls let the leader try another node (issue 17 follow-up: a node
// that did not answer may still be booting the VM; only its own refusal rules that out).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { peerRefused } from '../../src/cluster/ha.js';
import { FerryError } from '../../src/errors.js';
import { AgentUnreachableError } from '../../src/api/client.js';

/** An error as the client makes it from an agent's HTTP answer. */
function answered(code: string, status: number): FerryError {
  const e = FerryError.fromWire({ code, message: 'no' }, 'no');
  Object.assign(e.context, { status });
  return e;
}

test('a refusal the node answered lets the leader try another node', () => {
  for (const [code, status] of [
    ['E_FORBIDDEN', 403],
    ['E_QEMU_START', 500],
    ['E_CLUSTER_UNAVAILABLE', 503],
    ['E_HA_OWNED_ELSEWHERE', 409],
  ] as const)
    assert.equal(peerRefused(answered(code, status)), true, code);
});

test('no answer, a timeout, busy or an internal error: the node may still boot it', () => {
  assert.equal(peerRefused(new AgentUnreachableError('host-b', 'https://127.0.0.1:1', new Error('ECONNRESET'))), false);
  for (const [code, status] of [
    ['E_TIMEOUT', 504],
    ['E_VM_BUSY', 409],
    ['E_INTERNAL', 500],
    ['E_SOMETHING_NEW', 500],
  ] as const)
    assert.equal(peerRefused(answered(code, status)), false, code);
  // A FerryError raised on the leader's side (no HTTP status): nothing was answered.
  assert.equal(peerRefused(new FerryError('E_TIMEOUT', 'Cannot call: timed out')), false);
  assert.equal(peerRefused(new Error('socket hang up')), false);
});
