// The agent's systemd unit: what makes stopping, restarting or upgrading the agent unable to
// kill a VM (QEMU in its own scope under machine.slice, the unit signalling only its main
// process), readiness, and no restart loop on a configuration error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../../guest/paths.js';
import { qemuLaunchCommand } from '../../src/qemu/scope.js';
import { AGENT_NICE } from '../../src/lab/lab.js';

type Unit = Record<string, Map<string, string[]>>;

/** systemd's unit syntax, enough for our own files: sections, repeated keys, comments. */
function parseUnit(text: string): Unit {
  const unit: Unit = {};
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s?.[1]) {
      section = s[1];
      unit[section] ??= new Map();
      continue;
    }
    const eq = line.indexOf('=');
    assert.ok(eq > 0 && section, `a key=value line inside a section: ${line}`);
    const m = unit[section]!;
    const key = line.slice(0, eq).trim();
    m.set(key, [...(m.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return unit;
}

const unit = parseUnit(fs.readFileSync(path.join(REPO_ROOT, 'packaging', 'ferry-agent.service'), 'utf8'));
const service = unit.Service!;
const one = (k: string): string | undefined => service.get(k)?.at(-1);

test('stopping or restarting the agent unit cannot reach a QEMU', () => {
  // 1. QEMU never runs in the unit's cgroup: with systemd it gets a scope of its own in machine.slice.
  const launch = qemuLaunchCommand('qemu-system-x86_64', ['-S'], { vm: 'v', useScope: true });
  assert.ok(launch.args.includes('--scope') && launch.args.includes('--slice=machine.slice'));
  assert.notEqual(one('Slice'), 'machine.slice', 'the agent itself is not in machine.slice');
  assert.equal(service.get('Delegate'), undefined, 'the agent does not manage a cgroup subtree of its own');
  // 2. Second guard: a stop signals the main process only (mixed or control-group would SIGKILL the rest).
  assert.equal(one('KillMode'), 'process');
  assert.equal(service.get('ExecStop'), undefined, 'no stop command that could take VMs down');
  assert.equal(service.get('ExecStopPost'), undefined);
  // The runtime folder survives the restart.
  assert.equal(one('RuntimeDirectory'), 'ferry');
  assert.equal(one('RuntimeDirectoryPreserve'), 'yes');
});

test('the unit runs the packaged CLI with the host configuration and reports readiness', () => {
  assert.deepEqual(service.get('ExecStart'), ['/usr/bin/ferry agent --config /etc/ferry/agent.json']);
  assert.equal(one('Type'), 'notify');
  assert.equal(one('NotifyAccess'), 'all', 'READY=1 comes from systemd-notify, a child of the agent');
  assert.equal(one('StateDirectory'), 'ferry');
  assert.equal(one('ConfigurationDirectory'), 'ferry');
  assert.equal(unit.Install?.get('WantedBy')?.[0], 'multi-user.target');
});

test('a configuration error (exit 2) is not restarted; other failures are', () => {
  assert.equal(one('Restart'), 'on-failure');
  assert.ok(one('RestartPreventExitStatus')?.split(/\s+/).includes('2'));
});

test('the agent yields CPU to the guests', () => {
  // Weights count between siblings: the agent's slice sits beside machine.slice (weight 100).
  assert.equal(one('Slice'), 'ferry.slice');
  const slice = parseUnit(fs.readFileSync(path.join(REPO_ROOT, 'packaging', 'ferry.slice'), 'utf8')).Slice;
  assert.ok(Number(slice?.get('CPUWeight')?.at(-1)) < 100, 'below machine.slice’s default weight of 100');
  assert.ok(Number(slice?.get('IOWeight')?.at(-1)) < 100);
  assert.ok(Number(one('Nice')) > 0);
  // A child inherits its parent's nice level: QEMU, which the agent starts, is put back to 0.
  const launch = qemuLaunchCommand('qemu-system-x86_64', ['-S'], { vm: 'v', useScope: true, agentNice: 5 });
  assert.ok(launch.args.includes('--nice=0'));
  // The lab's agents run at the unit's level.
  assert.equal(AGENT_NICE, Number(one('Nice')));
});
