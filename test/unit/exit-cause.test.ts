// Why a QEMU went away when Ferry was not ending it: the guest powered off (its HA record goes),
// it died (an HA VM is restarted on its node), or the host ended it on purpose (nothing is done).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { exitCause } from '../../src/agent/vms.js';
import type { QmpEvent } from '../../src/qemu/commands.js';

const ev = (event: string, data?: Record<string, unknown>, index = 0): QmpEvent => ({
  event,
  index,
  ...(data ? { data } : {}),
});

test('the guest powered off: guest, except inside a vm stop (which presses the same button)', () => {
  const h = [ev('RESUME'), ev('POWERDOWN', undefined, 1), ev('SHUTDOWN', { guest: true, reason: 'guest-shutdown' }, 2)];
  assert.equal(exitCause(h, 'idle'), 'guest');
  assert.equal(exitCause(h, 'configuring'), 'guest');
  assert.equal(exitCause(h, 'stopping'), 'other');
});

test('no SHUTDOWN at all: died, unless an operation holds the VM', () => {
  assert.equal(exitCause([], 'idle'), 'died');
  assert.equal(exitCause([ev('RESUME'), ev('RESET', { guest: true }, 1)], 'idle'), 'died');
  assert.equal(exitCause([], 'stopping'), 'other');
  assert.equal(exitCause([], 'migrating:job-1'), 'other');
  assert.equal(exitCause([], 'checkpointing'), 'other');
});

test('ended from the host (SIGTERM, a QMP quit): on purpose, nothing to do', () => {
  assert.equal(exitCause([ev('SHUTDOWN', { guest: false, reason: 'host-signal' })], 'idle'), 'other');
  assert.equal(exitCause([ev('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' })], 'idle'), 'other');
  // The last SHUTDOWN counts (a guest power-off after an earlier, handled, host request).
  const h = [ev('SHUTDOWN', { guest: false, reason: 'host-qmp-system-reset' }), ev('SHUTDOWN', { guest: true }, 1)];
  assert.equal(exitCause(h, 'idle'), 'guest');
});
