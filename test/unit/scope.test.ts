// The command that starts QEMU: inside a transient scope under machine.slice when systemd
// is init (so stopping the agent's unit cannot reach it), QEMU itself otherwise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { qemuLaunchCommand, scopeUnitName } from '../../src/qemu/scope.js';

const argv = ['-nodefaults', '-name', 'web1', '-qmp', 'unix:/x.sock,server=on,wait=off'];

test('with systemd QEMU runs in its own scope under machine.slice, exec-ed by systemd-run', () => {
  const c = qemuLaunchCommand('qemu-system-x86_64', argv, {
    vm: 'web1',
    useScope: true,
    unit: 'ferry-vm-web1-abc123.scope',
  });
  assert.equal(c.file, 'systemd-run');
  assert.equal(c.scope, 'ferry-vm-web1-abc123.scope');
  const sep = c.args.indexOf('--');
  assert.deepEqual(c.args.slice(sep + 1), ['qemu-system-x86_64', ...argv], 'QEMU and its argv unchanged after --');
  const opts = c.args.slice(0, sep);
  assert.ok(opts.includes('--scope'), 'a scope: systemd-run execs QEMU, so the spawned pid is QEMU');
  assert.ok(opts.includes('--slice=machine.slice'));
  assert.ok(opts.includes('--unit=ferry-vm-web1-abc123.scope'));
  assert.ok(opts.includes('--collect'), 'a failed scope does not linger');
  assert.ok(!opts.some((o) => o.startsWith('--user')), 'the system manager, not a user one');
});

test('without systemd QEMU is spawned as is', () => {
  assert.deepEqual(qemuLaunchCommand('qemu-system-x86_64', argv, { vm: 'web1', useScope: false }), {
    file: 'qemu-system-x86_64',
    args: argv,
    scope: null,
  });
});

test('QEMU runs at nice 0 though the agent that starts it is niced (children inherit the level)', () => {
  const scoped = qemuLaunchCommand('qemu-system-x86_64', argv, { vm: 'web1', useScope: true, agentNice: 5 });
  assert.ok(scoped.args.slice(0, scoped.args.indexOf('--')).includes('--nice=0'));
  assert.deepEqual(qemuLaunchCommand('qemu-system-x86_64', argv, { vm: 'web1', useScope: false, agentNice: 5 }), {
    file: 'nice',
    args: ['-n', '-5', '--', 'qemu-system-x86_64', ...argv],
    scope: null,
  });
});

test('scope names are valid unit names and unique per start', () => {
  const a = scopeUnitName('web-1.prod_a');
  assert.match(a, /^ferry-vm-web-1\.prod_a-[0-9a-f]{6}\.scope$/);
  assert.notEqual(a, scopeUnitName('web-1.prod_a'));
});
