// Issue 16.5, the pure parts: fail-back windows and the leader's fail-back decision, the
// queue's refusal to admit moves into a paused node, and `vm set --cpu` model checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AwayVms,
  failbackProblem,
  inWindow,
  localMinutes,
  parseFailback,
  type FailbackNode,
  type FailbackVm,
  withAway,
} from '../../src/cluster/failback.js';
import { ClusterPolicy } from '../../src/cluster/model.js';
import { schedule } from '../../src/cluster/schedule.js';
import { DEFAULT_LIMITS, type QueueItem } from '../../src/cluster/model.js';
import { assertStoppedForCpu, resolveCpuModel } from '../../src/vm/cpu-setting.js';
import { FerryError } from '../../src/errors.js';

const hm = (s: string): number => {
  const [h = '0', m = '0'] = s.split(':');
  return Number(h) * 60 + Number(m);
};

test('fail-back settings: immediately, never and HH:MM-HH:MM parse; anything else is refused with the forms', () => {
  assert.deepEqual(parseFailback('immediately'), { kind: 'immediately' });
  assert.deepEqual(parseFailback('never'), { kind: 'never' });
  assert.deepEqual(parseFailback('22:00-02:30'), { kind: 'window', start: 22 * 60, end: 150 });
  for (const bad of ['', 'now', '24:00-01:00', '9:00-10:00', '10:00', '10:00-11:00-12:00', '10:60-11:00'])
    assert.match(failbackProblem(bad) ?? '', /is not 'immediately', 'never' or a window/, bad);
  assert.match(failbackProblem('10:00-10:00') ?? '', /is empty.*'immediately'/);
  assert.throws(() => parseFailback('soon'), RangeError);
  // The policy's schema uses the same check, and defaults to never (Hyper-V's default).
  assert.equal(ClusterPolicy.parse({}).failback, 'never');
  assert.equal(ClusterPolicy.safeParse({ failback: '25:00-01:00' }).success, false);
});

test('fail-back windows: start included, end excluded; a window may cross midnight', () => {
  const day = parseFailback('09:00-17:00');
  assert.equal(inWindow(day, hm('08:59')), false);
  assert.equal(inWindow(day, hm('09:00')), true);
  assert.equal(inWindow(day, hm('16:59')), true);
  assert.equal(inWindow(day, hm('17:00')), false);
  const night = parseFailback('22:00-02:00');
  for (const t of ['22:00', '23:59', '00:00', '01:59']) assert.equal(inWindow(night, hm(t)), true, t);
  for (const t of ['02:00', '12:00', '21:59']) assert.equal(inWindow(night, hm(t)), false, t);
  assert.equal(inWindow(parseFailback('immediately'), 0), true);
  assert.equal(inWindow(parseFailback('never'), 0), false);
});

test("fail-back windows are read in the leader's local time (TZ)", () => {
  const saved = process.env.TZ;
  try {
    const at = new Date('2026-12-01T23:30:00Z');
    process.env.TZ = 'UTC';
    assert.equal(localMinutes(at), hm('23:30'));
    process.env.TZ = 'Europe/Berlin'; // UTC+1 in December: past midnight there
    assert.equal(localMinutes(at), hm('00:30'));
    assert.equal(inWindow(parseFailback('00:00-01:00'), localMinutes(at)), true);
    process.env.TZ = 'America/New_York'; // UTC-5
    assert.equal(localMinutes(at), hm('18:30'));
    assert.equal(inWindow(parseFailback('00:00-01:00'), localMinutes(at)), false);
  } finally {
    if (saved === undefined) delete process.env.TZ;
    else process.env.TZ = saved;
  }
});

const node = (name: string, over: Partial<FailbackNode> = {}): FailbackNode => ({
  name,
  up: true,
  paused: false,
  mayHold: true,
  busy: false,
  ...over,
});
const vm = (name: string, owner: string, failback: string, preferred = ['a']): FailbackVm => ({
  name,
  owner,
  preferredOwners: preferred,
  failback,
});

test('fail-back decision: a VM goes home once per return, only after home was away, only in its window', () => {
  const away = new AwayVms();
  const noon = hm('12:00');
  const v = [vm('v', 'b', 'immediately')];
  // Moved off a healthy home by an administrator: not away, not pulled back…
  assert.equal(away.decide(v, [node('a'), node('b')], noon).size, 0);
  // …nor once home goes down or is paused (without a drain): it did not leave because of that.
  away.decide(v, [node('a', { up: false }), node('b')], noon);
  away.decide(v, [node('a', { paused: true }), node('b')], noon);
  assert.equal(away.has('v'), false);
  assert.equal(away.decide(v, [node('a'), node('b')], noon).size, 0);
  // Home drained (its drain moved v): away.
  assert.equal(away.decide(v, [node('a', { paused: true, drained: ['v'] }), node('b')], noon).size, 0);
  assert.equal(away.has('v'), true);
  // Home back: due now, grouped by home node.
  const due = away.decide(v, [node('a', { drained: ['v'] }), node('b')], noon);
  assert.deepEqual([...due], [['a', [{ vm: 'v', from: 'b' }]]]);
  away.done('v');
  // At most once per return: the next pass (the move failed, VM still on b) does nothing.
  assert.equal(away.decide(v, [node('a'), node('b')], noon).size, 0);
  // An HA restart off a dead home marked the record in its own write (ha.ts): the pass keeps
  // that mark while home is down, and fails the VM back once home is up.
  const ha = new AwayVms([['v', 'a']]);
  assert.equal(ha.decide(v, [node('a', { up: false }), node('b')], noon).size, 0);
  assert.equal(ha.get('v'), 'a');
  assert.equal(ha.decide(v, [node('a'), node('b')], noon).size, 1);
});

test('fail-back decision: waits for the window and a busy or ineligible home; never, home VMs stay', () => {
  // HA restarted w, n and x off a (x has no preferred owner, h is home): the records' marks.
  const away = new AwayVms([
    ['w', 'a'],
    ['n', 'a'],
    ['x', 'a'],
  ]);
  const down = [node('a', { up: false }), node('b')];
  const vms = [
    vm('w', 'b', '22:00-02:00'),
    vm('n', 'b', 'never'),
    vm('h', 'a', 'immediately'),
    vm('x', 'b', 'immediately', []),
  ];
  away.decide(vms, down, hm('12:00'));
  assert.deepEqual(away.entries().sort(), [
    ['n', 'a'],
    ['w', 'a'],
  ]);
  // Home back at noon: the window VM waits, the 'never' VM is no longer away.
  assert.equal(away.decide(vms, [node('a'), node('b')], hm('12:00')).size, 0);
  assert.deepEqual(away.entries(), [['w', 'a']]);
  // In the window but home runs a drain or fail-back, or may not hold HA VMs: still waits.
  assert.equal(away.decide(vms, [node('a', { busy: true }), node('b')], hm('23:00')).size, 0);
  assert.equal(away.decide(vms, [node('a', { mayHold: false }), node('b')], hm('23:00')).size, 0);
  assert.deepEqual(away.entries(), [['w', 'a']]);
  // mayHold false counts as "not available": still away; once eligible and in the window, it goes.
  assert.deepEqual([...away.decide(vms, [node('a'), node('b')], hm('01:30'))], [['a', [{ vm: 'w', from: 'b' }]]]);
  // A VM no longer clustered is forgotten.
  away.decide([], [node('a'), node('b')], hm('01:30'));
  assert.deepEqual(away.entries(), []);
});

test('fail-back decision: why a VM still away waits, for the leader to say', () => {
  const vms = [vm('w', 'b', '22:00-02:00'), vm('h', 'a', 'immediately')];
  const why = (nodes: FailbackNode[], at: string): Array<[string, string]> => {
    const waiting = new Map<string, string>();
    new AwayVms([['w', 'a']]).decide(vms, nodes, hm(at), waiting);
    return [...waiting];
  };
  assert.deepEqual(why([node('a', { up: false }), node('b')], '23:00'), [['w', 'a is down']]);
  assert.deepEqual(why([node('a', { paused: true }), node('b')], '23:00'), [['w', 'a is paused']]);
  assert.deepEqual(why([node('a', { mayHold: false }), node('b')], '23:00'), [['w', 'a may not hold HA VMs']]);
  assert.deepEqual(why([node('b')], '23:00'), [['w', 'a is not a member']]);
  assert.deepEqual(why([node('a', { busy: true }), node('b')], '23:00'), [['w', 'a drain or fail-back of a runs']]);
  assert.deepEqual(why([node('a'), node('b', { up: false })], '23:00'), [['w', "the VM's node b is down"]]);
  assert.deepEqual(why([node('a'), node('b')], '12:00'), [['w', "outside the VM's fail-back window 22:00-02:00"]]);
  assert.deepEqual(why([node('a'), node('b')], '23:00'), [], 'due: nothing to wait for');
});

test('fail-back decision: the away marks come from the records, so a new leader goes on', () => {
  // A new leader that never saw home down: the record's mark is enough.
  const seeded = new AwayVms([['v', 'a']]);
  assert.deepEqual(
    [...seeded.decide([vm('v', 'b', 'immediately')], [node('a'), node('b')], hm('12:00'))],
    [['a', [{ vm: 'v', from: 'b' }]]],
  );
  // Without a mark it is an administrator's move: left where it is.
  assert.equal(new AwayVms().decide([vm('v', 'b', 'immediately')], [node('a'), node('b')], hm('12:00')).size, 0);
  // A mark for a VM now at home ends.
  const home = new AwayVms([['v', 'a']]);
  home.decide([vm('v', 'a', 'immediately')], [node('a'), node('b')], hm('12:00'));
  assert.equal(home.get('v'), undefined);
  // A mark for a node that is no longer the VM's home (preferred owners changed) ends.
  const moved = new AwayVms([['v', 'x']]);
  assert.equal(moved.decide([vm('v', 'b', 'immediately')], [node('a'), node('b')], hm('12:00')).size, 0);
  assert.equal(moved.get('v'), undefined);
  // withAway sets or drops the mark and keeps the rest of the record.
  const rec: { name: string; owner: string; away?: string } = { name: 'v', owner: 'b' };
  assert.deepEqual(withAway(rec, 'a'), { name: 'v', owner: 'b', away: 'a' });
  assert.deepEqual(withAway({ ...rec, away: 'a' }, undefined), { name: 'v', owner: 'b' });
});

const item = (id: string, from: string, to: string): QueueItem => ({
  id,
  vm: `vm-${id}`,
  from,
  to,
  priority: 'normal',
  seq: Number(id),
  state: 'queued',
});

test('schedule: a move into a paused node is never admitted; moves between other nodes go on', () => {
  const q = [item('1', 'a', 'b'), item('2', 'a', 'c'), item('3', 'c', 'b')];
  assert.deepEqual(schedule(q, DEFAULT_LIMITS, new Set(['b'])), ['2']);
  assert.deepEqual(schedule(q, DEFAULT_LIMITS, new Set()), ['1', '2', '3']);
});

const models = [
  { name: 'qemu64', unavailableFeatures: [], migrationSafe: true },
  { name: 'Nehalem', unavailableFeatures: [], migrationSafe: true, aliasOf: 'Nehalem-v1' },
  { name: 'Skylake-Server', unavailableFeatures: ['avx512f', 'pcid'], migrationSafe: true },
];

test('vm set --cpu: a known usable model (any case), host only under KVM, unknown and unusable ones refused', () => {
  assert.equal(resolveCpuModel('v', 'Nehalem', { accel: 'tcg', models }), 'Nehalem');
  assert.equal(resolveCpuModel('v', 'nehalem', { accel: 'tcg', models }), 'Nehalem');
  assert.equal(resolveCpuModel('v', 'host', { accel: 'kvm', models: [] }), 'host');
  const refused = (model: string, accel: 'kvm' | 'tcg', re: RegExp): void => {
    assert.throws(
      () => resolveCpuModel('v', model, { accel, models }),
      (e: unknown) => e instanceof FerryError && e.code === 'E_INVALID_INPUT' && re.test(e.message),
      model,
    );
  };
  refused('host', 'tcg', /needs KVM.*under tcg/);
  refused('Pentium9000', 'tcg', /knows no such CPU model; usable here under tcg: qemu64, Nehalem$/);
  refused('Skylake-Server', 'tcg', /lacks avx512f, pcid/);
  refused('compat', 'tcg', /resolved by the CLI/);
  refused('a b', 'tcg', /letters, digits/);
  assert.throws(
    () => assertStoppedForCpu('v', true),
    (e: unknown) => e instanceof FerryError && e.code === 'E_VM_RUNNING' && /stop it first/.test(e.message),
  );
  assertStoppedForCpu('v', false);
});
