// Checkpoints on one host, through bin/ferry against a real lab with the probe guest: memory
// checkpoints of a running VM, apply (the guest's heartbeat returns to the checkpoint's),
// removal while it runs (every acknowledged record stays), a stopped VM's disk-only
// checkpoint, and bad input refused with nothing changed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { useLab, serialLog, waitProbe } from './lab.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { sleep } from '../../src/util/exec.js';
import { lastHb, logSize, restoredPart, waitMore } from './checkpoint-guest.js';
import type { CheckpointList, CheckpointView, VmView } from '../../src/api/schemas.js';

const L = useLab(1, { vmsPerTest: true });
const show = (name: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });
const list = (name: string): Promise<CheckpointList> =>
  ferryOk<CheckpointList>(['checkpoint', 'list', name, '--json'], { lab: L.lab });
const tree = (l: CheckpointList): string[] =>
  l.checkpoints.map((c) => `${'.'.repeat(c.depth)}${c.name}${c.memory ? '+mem' : ''}${c.current ? '*' : ''}`);

test('memory checkpoints of a running probe VM: apply goes back to c1; live removal keeps acked records', async () => {
  const vm = await ferryOk<VmView>(
    [
      'vm',
      'new',
      'ck1',
      '--host',
      'host-a',
      '--guest',
      'probe',
      '--path',
      path.join(L.lab, 'shared', 'ck1'),
      '--start',
      '--json',
    ],
    { lab: L.lab },
  );
  await waitProbe(L, vm, 20);
  const log = serialLog(L, 'host-a', vm.id);

  // c1: the heartbeat at its instant lies between the last one printed before and the first after.
  const beforeC1 = await fsp.readFile(log, 'utf8');
  const t0 = Date.now();
  const c1 = await ferryOk<CheckpointView>(['checkpoint', 'new', 'ck1', 'c1', '--json'], { lab: L.lab });
  const wallMs = Date.now() - t0;
  const atC1 = await logSize(log);
  assert.equal(c1.memory, true);
  assert.equal(c1.running, true);
  assert.ok(c1.pauseMs !== null && c1.pauseMs >= 0 && c1.pauseMs <= c1.tookMs, JSON.stringify(c1));
  process.stdout.write(
    `# memory checkpoint of the 256 MiB probe: taken in ${c1.tookMs} ms (CLI round trip ${wallMs} ms), ` +
      `guest paused ${c1.pauseMs} ms, files ${c1.files.join(', ')} (${c1.sizeBytes} bytes)\n`,
  );
  const ackBeforeC1 = parseSerial(beforeC1).highestAck ?? 0;
  const lo = lastHb(beforeC1);
  const afterC1 = await waitMore(log, atC1, 1);
  const hi = parseSerial(afterC1).heartbeats[0]?.seq ?? Infinity;
  assert.ok(ackBeforeC1 > 0 && lo > 0);

  // Writes go on; c2.
  await waitMore(log, atC1, 10);
  const c2 = await ferryOk<CheckpointView>(['checkpoint', 'new', 'ck1', 'c2', '--json'], { lab: L.lab });
  process.stdout.write(`# second memory checkpoint: ${c2.tookMs} ms, guest paused ${c2.pauseMs} ms\n`);
  await waitMore(log, await logSize(log), 5);
  const l2 = await list('ck1');
  assert.deepEqual(tree(l2), ['c1+mem', '.c2+mem*']);
  assert.equal(l2.checkpoints[1]?.parentName, 'c1');
  assert.deepEqual(
    (await show('ck1')).checkpoints.map((c) => c.name),
    ['c1', 'c2'],
  );

  // Bad input: refused with what to do, nothing changed.
  const bad: Array<[string[], RegExp]> = [
    [
      ['checkpoint', 'new', 'ck1', 'c1'],
      /Cannot create checkpoint 'c1' of VM 'ck1': a checkpoint with that name exists; choose/,
    ],
    [['checkpoint', 'new', 'ck1', 'bad name'], /Cannot use 'bad name' as a checkpoint name of VM 'ck1': .*; choose/],
    [
      ['checkpoint', 'apply', 'ck1', 'nope'],
      /Cannot apply checkpoint 'nope' of VM 'ck1': it has no such checkpoint \(it has c1, c2\)/,
    ],
    [['checkpoint', 'rm', 'ck1', 'nope'], /Cannot remove checkpoint 'nope'/],
  ];
  for (const [args, re] of bad) {
    const r = await ferry(args, { lab: L.lab });
    assert.notEqual(r.code, 0, args.join(' '));
    assert.match(r.stderr, re, args.join(' '));
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
  assert.deepEqual(await list('ck1'), l2, 'nothing changed');
  assert.equal((await show('ck1')).host, 'host-a');

  // Apply c1: the guest's heartbeat goes back to c1's; the state it left is kept as a branch.
  const left = await fsp.readFile(log, 'utf8');
  const a = await ferryOk<{ checkpoint: string; branch: string | null; running: boolean; vm: VmView }>(
    ['checkpoint', 'apply', 'ck1', 'c1', '--json'],
    { lab: L.lab },
  );
  assert.equal(a.running, true);
  assert.equal(a.vm.state, 'running');
  assert.ok(a.branch);
  // The old guest printed on until it was stopped; the restored one starts where its sequence goes back.
  await waitMore(log, left.length, 10);
  const restored = async (): Promise<string> => restoredPart((await fsp.readFile(log, 'utf8')).slice(left.length));
  let fromC1 = await restored();
  for (let i = 0; i < 100 && parseSerial(fromC1).heartbeats.length < 10; i++) {
    await sleep(200);
    fromC1 = await restored();
  }
  const first = parseSerial(fromC1).heartbeats[0]?.seq ?? -1;
  assert.ok(first >= lo && first <= hi + 1, `first heartbeat after apply ${first}, c1 between ${lo} and ${hi}`);
  assert.ok(first < lastHb(left) - 5, `went back from ${lastHb(left)} to ${first}`);
  assert.deepEqual(tree(await list('ck1')), ['c1+mem*', '.c2+mem', `..${a.branch}+mem`]);

  // c3 while it runs, then removed while it runs (its data is streamed into the active image).
  const c3 = await ferryOk<CheckpointView>(['checkpoint', 'new', 'ck1', 'c3', '--json'], { lab: L.lab });
  assert.equal(c3.parentName, 'c1');
  await waitMore(log, left.length, 20);
  await ferryOk(['checkpoint', 'rm', 'ck1', 'c3'], { lab: L.lab });
  // c2 (a branch not running) is merged into the one built on it.
  await ferryOk(['checkpoint', 'rm', 'ck1', 'c2'], { lab: L.lab });
  assert.deepEqual(tree(await list('ck1')), ['c1+mem*', `.${a.branch}+mem`]);
  const r = await ferry(['checkpoint', 'rm', 'ck1', 'c1'], { lab: L.lab });
  assert.match(r.stderr, /Cannot remove checkpoint 'c1' of VM 'ck1': it is the first checkpoint .* 2 states/);
  const more = await fsp.readFile(log, 'utf8');
  await waitMore(log, more.length, 10);

  await ferryOk(['vm', 'stop', 'ck1', '--force'], { lab: L.lab });
  const ack = parseSerial(await restored()).highestAck!;
  assert.ok(ack > ackBeforeC1);
  const disk = (await show('ck1')).disks[0]!;
  const rep = await verifyDiskImage(disk.path, { format: 'qcow2', highestAck: ack });
  assert.equal(rep.ok, true, rep.problems.join('; '));

  // The branch: its disks and memory are where the VM was before the apply.
  await ferryOk(['checkpoint', 'apply', 'ck1', a.branch, '--discard'], { lab: L.lab });
  assert.equal((await show('ck1')).state, 'running');
  const back = await waitMore(log, (await fsp.readFile(log, 'utf8')).length, 3);
  assert.ok(parseSerial(back).heartbeats[0]!.seq >= lastHb(left) - 1, 'the branch resumes where the VM left');
  await ferryOk(['vm', 'stop', 'ck1', '--force'], { lab: L.lab });
  await ferryOk(['vm', 'rm', 'ck1'], { lab: L.lab });
  assert.equal(
    await fsp.access(path.join(L.lab, 'shared', 'ck1', 'checkpoints')).then(
      () => 'there',
      () => 'gone',
    ),
    'gone',
  );
});

test("a stopped VM's disk-only checkpoint applies: its disk returns to that state", async () => {
  const vm = await ferryOk<VmView>(
    [
      'vm',
      'new',
      'ck2',
      '--host',
      'host-a',
      '--guest',
      'probe',
      '--path',
      path.join(L.lab, 'shared', 'ck2'),
      '--start',
      '--json',
    ],
    { lab: L.lab },
  );
  await waitProbe(L, vm, 10);
  await ferryOk(['vm', 'stop', 'ck2', '--force'], { lab: L.lab });
  const base = (await show('ck2')).disks[0]!.path;
  const atS1 = await verifyDiskImage(base, { format: 'qcow2' });
  const s1 = await ferryOk<CheckpointView>(['checkpoint', 'new', 'ck2', 's1', '--json'], { lab: L.lab });
  assert.equal(s1.memory, false);
  assert.equal(s1.pauseMs, null);
  assert.deepEqual(s1.baseDisks, [base]);

  const log = serialLog(L, 'host-a', vm.id);
  await ferryOk(['vm', 'start', 'ck2'], { lab: L.lab });
  await waitMore(log, 0, 15);
  await ferryOk(['vm', 'stop', 'ck2', '--force'], { lab: L.lab });
  const later = await verifyDiskImage((await show('ck2')).disks[0]!.path, { format: 'qcow2' });
  assert.ok(later.highestSeq > atS1.highestSeq);

  const a = await ferryOk<{ running: boolean; branch: string | null; vm: VmView }>(
    ['checkpoint', 'apply', 'ck2', 's1', '--json'],
    { lab: L.lab },
  );
  assert.equal(a.running, false);
  assert.equal(a.vm.state, 'stopped');
  const now = await verifyDiskImage(a.vm.disks[0]!.path, { format: 'qcow2', highestAck: atS1.highestSeq });
  assert.equal(now.ok, true, now.problems.join('; '));
  assert.equal(now.highestSeq, atS1.highestSeq, 'the disk is back at s1');
  // Removing s1 (the first checkpoint, stopped VM): the branch must go first, then s1 merges into the base disk.
  await ferryOk(['checkpoint', 'rm', 'ck2', a.branch!], { lab: L.lab });
  await ferryOk(['checkpoint', 'rm', 'ck2', 's1'], { lab: L.lab });
  const after = await show('ck2');
  assert.deepEqual(after.checkpoints, []);
  assert.equal(after.disks[0]!.path, base);
  assert.equal((await verifyDiskImage(base, { format: 'qcow2' })).highestSeq, atS1.highestSeq);
  await ferryOk(['vm', 'rm', 'ck2'], { lab: L.lab });
});
