import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describeTrouble, troubleOf, type AfterArrival } from '../../src/migration/after-arrival.js';

test("only the guest's own reset, power-off or panic counts, not an administrator's", () => {
  const ev = (event: string, data: Record<string, unknown>) => ({ event, data, index: 0 });
  assert.deepEqual(troubleOf(ev('RESET', { guest: true, reason: 'guest-reset' })), {
    what: 'reset',
    reason: 'guest-reset',
  });
  assert.deepEqual(troubleOf(ev('SHUTDOWN', { guest: true, reason: 'guest-shutdown' })), {
    what: 'shutdown',
    reason: 'guest-shutdown',
  });
  assert.deepEqual(troubleOf(ev('GUEST_PANICKED', { action: 'pause' })), { what: 'panic', reason: 'pause' });
  assert.equal(troubleOf(ev('RESET', { guest: false, reason: 'host-qmp-system-reset' })), null);
  assert.equal(troubleOf(ev('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' })), null);
  assert.equal(troubleOf(ev('RESUME', {})), null);
});

test('the message names what happened, when, from where, and the likely cause under TCG', () => {
  const a: AfterArrival = {
    from: 'host-a',
    migration: 'm1',
    arrivedAt: '2026-12-02T10:00:00.000Z',
    trouble: { what: 'reset', reason: 'guest-reset', afterMs: 1234 },
  };
  const tcg = describeTrouble('web1', a, 'tcg');
  assert.match(tcg, /^VM 'web1' restarted itself 1\.2 s after arriving from 'host-a' \(move m1, QEMU: guest-reset\)/);
  assert.match(tcg, /TCG/);
  assert.match(tcg, /pti=on on its kernel command line/, 'the remedy is named');
  assert.doesNotMatch(describeTrouble('web1', a, 'kvm'), /TCG/);
  assert.match(describeTrouble('web1', { ...a, trouble: null }, 'kvm'), /arrived from 'host-a' at 2026-12-02T10:00/);
});
