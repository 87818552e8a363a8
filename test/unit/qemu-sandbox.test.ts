import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseVmSpec, newVmId } from '../../src/vm/spec.js';
import { buildArgv } from '../../src/qemu/argv.js';
import { checkSandboxAnswer, SANDBOX } from '../../src/qemu/sandbox.js';
import { qemuLaunchCommand } from '../../src/qemu/scope.js';
import { dropPrivilegesArgs } from '../../src/qemu/user.js';

const spec = parseVmSpec({
  name: 'web1',
  id: newVmId(),
  memoryMiB: 256,
  cpus: 1,
  disks: [{ id: 'disk0', path: '/pool/web1.qcow2', format: 'qcow2' }],
  nics: [{ id: 'nic0', switch: 'lan', mac: '52:54:00:12:34:56' }],
  boot: { kind: 'disk' },
  configPath: '/vms/web1',
  checkpointPath: '/vms/web1',
  pagingPath: '/vms/web1',
});
const paths = { qmpSocket: '/run/q.sock', serialLog: '/run/s.log', pidFile: '/run/p' };

test('argv: every QEMU runs with the seccomp sandbox denying exec, privileges, scheduling and obsolete calls', () => {
  assert.equal(SANDBOX, 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
  for (const opts of [{}, { incoming: true }, { paused: true }]) {
    const a = buildArgv(spec, { accel: 'tcg', paths, ...opts });
    const at = a.indexOf('-sandbox');
    assert.ok(at >= 0, 'has -sandbox');
    assert.equal(a[at + 1], SANDBOX);
    assert.equal(a.filter((x) => x === '-sandbox').length, 1);
  }
});

test('argv: nothing in the command line needs what the sandbox denies', () => {
  const a = buildArgv(spec, {
    accel: 'tcg',
    paths,
    switches: () => ({ kind: 'bridge', bridge: 'br0', tap: 'tap-web1-0' }),
  });
  const joined = a.join(' ');
  // Tap scripts would be fork/exec'd; -runas needs setuid; these set affinity or memory locking.
  assert.match(joined, /tap,id=net-nic0,ifname=tap-web1-0,script=no,downscript=no/);
  for (const bad of ['-runas', '-overcommit', '-daemonize', '-chroot', 'exec:', 'thread-context', 'host-nodes'])
    assert.ok(!joined.includes(bad), `no ${bad}`);
});

test('sandbox probe: the answer must list -sandbox with every parameter Ferry sets', () => {
  const full = JSON.stringify({
    return: [
      {
        option: 'sandbox',
        parameters: ['resourcecontrol', 'spawn', 'elevateprivileges', 'obsolete', 'enable'].map((name) => ({ name })),
      },
    ],
  });
  assert.equal(checkSandboxAnswer(`{"QMP":{}}\n{"return":{}}\n${full}\n{"return":{}}`), null);
  assert.match(checkSandboxAnswer('{"return":[]}') ?? '', /no -sandbox option/);
  const partial = JSON.stringify({ return: [{ option: 'sandbox', parameters: [{ name: 'enable' }] }] });
  assert.match(checkSandboxAnswer(partial) ?? '', /lacks obsolete, elevateprivileges, spawn, resourcecontrol/);
  assert.match(checkSandboxAnswer('qemu-system-x86_64: seccomp support is disabled') ?? '', /did not answer/);
});

test('QEMU user: setpriv becomes the user last, after the scope and the priority, then execs QEMU', () => {
  const u = { name: 'ferry-qemu', uid: 999, gid: 995, groups: [995, 107] };
  const drop = dropPrivilegesArgs(u);
  assert.deepEqual(drop, ['setpriv', '--reuid=999', '--regid=995', '--init-groups', '--']);
  const argv = ['-name', 'web1'];
  assert.deepEqual(qemuLaunchCommand('qemu-system-x86_64', argv, { vm: 'web1', useScope: false, runAs: drop }), {
    file: 'setpriv',
    args: [...drop.slice(1), 'qemu-system-x86_64', ...argv],
    scope: null,
  });
  const niced = qemuLaunchCommand('qemu-system-x86_64', argv, {
    vm: 'web1',
    useScope: false,
    agentNice: 5,
    runAs: drop,
  });
  assert.deepEqual(niced.args, ['-n', '-5', '--', ...drop, 'qemu-system-x86_64', ...argv]);
  const scoped = qemuLaunchCommand('qemu-system-x86_64', argv, { vm: 'web1', useScope: true, runAs: drop });
  const sep = scoped.args.indexOf('--');
  assert.deepEqual(scoped.args.slice(sep + 1), [...drop, 'qemu-system-x86_64', ...argv]);
});
