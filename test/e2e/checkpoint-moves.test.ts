// Checkpoints move with their VM, through bin/ferry against a real lab with the probe guest:
// a live move with shared storage keeps the tree (host-b lists it and applies a memory
// checkpoint, the guest's heartbeat back at the checkpoint's and every acked record on disk);
// storage moves carry the chain to --checkpoint-path (running: the active layer mirrored onto
// the copied chain) and with everything to --path (stopped), and c1 still applies after each;
// shared nothing copies the chain once and mirrors only the active layer (running), or copies
// the files as they are (stopped), refused with nothing changed where the chain does not fit.
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { hostData, useLab, serialLog, waitProbe } from './lab.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { sleep } from '../../src/util/exec.js';
import type { CheckpointList, CheckpointView, VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { lastHb, logSize, restoredPart, waitMore } from './checkpoint-guest.js';

const L = useLab(2, { vmsPerTest: true });
const show = (name: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });
const list = (name: string): Promise<CheckpointList> =>
  ferryOk<CheckpointList>(['checkpoint', 'list', name, '--json'], { lab: L.lab });
/** The tree as names, parents, memory and current: what a move must keep. */
const shape = (l: CheckpointList): string[] =>
  l.checkpoints.map((c) => `${'.'.repeat(c.depth)}${c.name}${c.memory ? '+mem' : ''}${c.current ? '*' : ''}`);

/** c1 (memory) with the heartbeat range of its instant, writes go on, then c2. */
async function twoCheckpoints(vm: VmView): Promise<{ lo: number; hi: number; ackBeforeC1: number }> {
  const log = serialLog(L, vm.host, vm.id);
  const beforeC1 = await fsp.readFile(log, 'utf8');
  await ferryOk<CheckpointView>(['checkpoint', 'new', vm.name, 'c1', '--json'], { lab: L.lab });
  const atC1 = await logSize(log);
  const hi = parseSerial(await waitMore(log, atC1, 1)).heartbeats[0]?.seq ?? Infinity;
  await waitMore(log, atC1, 10);
  await ferryOk<CheckpointView>(['checkpoint', 'new', vm.name, 'c2', '--json'], { lab: L.lab });
  await waitMore(log, await logSize(log), 5);
  return { lo: lastHb(beforeC1), hi, ackBeforeC1: parseSerial(beforeC1).highestAck ?? 0 };
}

/**
 * Applies c1 on the VM's host: the restored guest's first heartbeat lies in c1's range, it runs
 * on, and once stopped its disk holds every record it acknowledged (the probe's own check).
 */
async function applyC1(name: string, c1: { lo: number; hi: number; ackBeforeC1: number }): Promise<void> {
  const vm = await show(name);
  const log = serialLog(L, vm.host, vm.id);
  const left = await fsp.readFile(log, 'utf8');
  const a = await ferryOk<{ running: boolean; vm: VmView }>(['checkpoint', 'apply', name, 'c1', '--json'], {
    lab: L.lab,
  });
  assert.equal(a.running, true);
  assert.equal(a.vm.state, 'running');
  // A running VM's old guest prints on until the apply stops it: the restored one starts where the
  // sequence goes back. A stopped VM's log goes on with the restored guest only.
  const restored = async (): Promise<string> => {
    const text = (await fsp.readFile(log, 'utf8')).slice(left.length);
    return vm.state === 'running' ? restoredPart(text) : text;
  };
  let fromC1 = await restored();
  for (let i = 0; i < 150 && parseSerial(fromC1).acks.length < 10; i++) {
    await sleep(200);
    fromC1 = await restored();
  }
  const first = parseSerial(fromC1).heartbeats[0]?.seq ?? -1;
  assert.ok(first >= c1.lo && first <= c1.hi + 1, `first heartbeat after apply ${first}, c1 between ${c1.lo}–${c1.hi}`);
  assert.ok(first < lastHb(left) - 5, `went back from ${lastHb(left)} to ${first}`);
  await ferryOk(['vm', 'stop', name, '--force'], { lab: L.lab });
  const ack = parseSerial(await restored()).highestAck ?? 0;
  assert.ok(ack > c1.ackBeforeC1, `acks after apply: ${ack}`);
  const disk = (await show(name)).disks[0]!;
  const rep = await verifyDiskImage(disk.path, { format: 'qcow2', highestAck: ack });
  assert.equal(rep.ok, true, rep.problems.join('; '));
}

test('a live move with shared storage keeps the checkpoint tree; c1 applies on host-b', async () => {
  const vm = await ferryOk<VmView>(
    ['vm', 'new', 'ckm1', '--host', 'host-a', '--guest', 'probe', '--path', path.join(L.lab, 'shared', 'ckm1')].concat([
      '--start',
      '--json',
    ]),
    { lab: L.lab },
  );
  await waitProbe(L, vm, 20);
  const c1 = await twoCheckpoints(vm);
  const before = await list('ckm1');
  assert.deepEqual(shape(before), ['c1+mem', '.c2+mem*']);

  const m = await ferryOk<MigrationRecord>(['move-vm', 'ckm1', '--to', 'host-b', '--json'], { lab: L.lab });
  assert.equal(m.state, 'completed', JSON.stringify(m.error));
  assert.equal(m.kind, 'live');
  process.stdout.write(
    `# live move with 2 checkpoints (shared storage): ${m.totalMs} ms, downtime ${m.downtimeMs} ms\n`,
  );
  const atB = await show('ckm1');
  assert.equal(atB.host, 'host-b');
  const after = await list('ckm1');
  assert.deepEqual(after, before, 'host-b lists the same tree, ids and files');
  await waitProbe(L, atB, 5);

  await applyC1('ckm1', c1);
  await ferryOk(['vm', 'rm', 'ckm1'], { lab: L.lab });
});

/** Every file of every checkpoint is in `folder`, and nothing is left in `old`. */
async function filesIn(l: CheckpointList, folder: string, old: string): Promise<void> {
  assert.equal(l.folder, folder);
  for (const c of l.checkpoints) for (const f of c.files) await fsp.access(path.join(folder, f));
  const gone = await fsp.access(old).then(
    () => 'there',
    () => 'gone',
  );
  assert.equal(gone, 'gone', `${old} removed`);
}

test('storage moves carry the checkpoints: --checkpoint-path (running), then --path (stopped)', async () => {
  const vm = await ferryOk<VmView>(
    ['vm', 'new', 'ckm2', '--host', 'host-a', '--guest', 'probe', '--path', path.join(L.lab, 'shared', 'ckm2')].concat([
      '--start',
      '--json',
    ]),
    { lab: L.lab },
  );
  await waitProbe(L, vm, 20);
  const c1 = await twoCheckpoints(vm);
  const before = await list('ckm2');
  const base = before.checkpoints[0]!.baseDisks[0]!;

  // Its disks are a chain held by the checkpoint folder: one disk alone cannot move; nothing changes.
  const active = (await show('ckm2')).disks[0]!.path;
  const r = await ferry(['move-storage', 'ckm2', '--vhd', `${active}=${path.join(L.lab, 'shared', 'x.qcow2')}`], {
    lab: L.lab,
  });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /Cannot move the disks of VM 'ckm2' with --vhd: it has checkpoints, .*--checkpoint-path/);
  assert.deepEqual(await list('ckm2'), before);

  const ckPath = path.join(L.lab, 'shared', 'ckm2-ck');
  const m = await ferryOk<MigrationRecord>(['move-storage', 'ckm2', '--checkpoint-path', ckPath, '--json'], {
    lab: L.lab,
  });
  assert.equal(m.state, 'completed', JSON.stringify(m.error));
  process.stdout.write(`# storage move of the chain to --checkpoint-path (running): ${m.totalMs} ms\n`);
  const moved = await list('ckm2');
  assert.deepEqual(shape(moved), shape(before));
  assert.deepEqual(
    moved.checkpoints.map((c) => [c.id, c.files, c.baseDisks]),
    before.checkpoints.map((c) => [c.id, c.files, c.baseDisks]),
  );
  await filesIn(moved, path.join(ckPath, 'checkpoints'), before.folder);
  const running = await show('ckm2');
  assert.equal(running.state, 'running');
  assert.ok(running.disks[0]!.path.startsWith(path.join(ckPath, 'checkpoints') + '/'), running.disks[0]!.path);
  await waitMore(serialLog(L, 'host-a', vm.id), await logSize(serialLog(L, 'host-a', vm.id)), 5);
  await applyC1('ckm2', c1);

  // Stopped, everything to a local pool: the base image goes too and the copies point at each other.
  const to = path.join(hostData(L, 'host-a'), 'pools', 'local', 'ckm2');
  const m2 = await ferryOk<MigrationRecord>(['move-storage', 'ckm2', '--path', to, '--json'], { lab: L.lab });
  assert.equal(m2.state, 'completed', JSON.stringify(m2.error));
  process.stdout.write(`# storage move with everything to --path (stopped): ${m2.totalMs} ms\n`);
  const there = await list('ckm2');
  assert.equal(there.checkpoints[0]!.baseDisks[0], path.join(to, path.basename(base)));
  await fsp.access(path.join(to, path.basename(base)));
  await filesIn(there, path.join(to, 'checkpoints'), path.join(ckPath, 'checkpoints'));
  await applyC1('ckm2', c1);
  await ferryOk(['vm', 'rm', 'ckm2'], { lab: L.lab });
});

/** The figures a shared-nothing move with a chain logs: its files' bytes and the time they took. */
function chainFigures(m: MigrationRecord): string {
  const e = m.events.find((x) => x.message.includes('checkpoint chain copied'));
  assert.ok(e, 'the move logs the chain it copied');
  const [, files, bytes, ms] = /(\d+) file\(s\), (\d+) bytes in (\d+) ms/.exec(e.message) ?? [];
  return `${files} chain file(s), ${(Number(bytes) / 1048576).toFixed(0)} MiB in ${ms} ms`;
}

test('shared nothing carries the checkpoints (running, then stopped); refused where they cannot fit', async (t) => {
  const vm = await ferryOk<VmView>(['vm', 'new', 'ckm3', '--host', 'host-a', '--guest', 'probe', '--start', '--json'], {
    lab: L.lab,
  });
  await waitProbe(L, vm, 20);
  const c1 = await twoCheckpoints(vm);
  const before = await list('ckm3');
  const same = (l: CheckpointList): unknown => l.checkpoints.map((c) => [c.id, c.name, c.parent, c.memory, c.files]);

  // A destination pool too small for the chain (two memory files): refused, nothing changed anywhere.
  const tiny = path.join(L.dir, 'tiny-ck');
  await fsp.mkdir(tiny);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', tiny]);
  t.after(() => {
    try {
      execFileSync('umount', ['-l', tiny]);
    } catch {
      /* gone */
    }
  });
  await ferryOk(['pool', 'add', 'tiny-ck', '--host', 'host-b', '--path', tiny], { lab: L.lab });
  const args = ['move-vm', 'ckm3', '--to', 'host-b', '--include-storage'];
  const r = await ferry([...args, '--storage-path', path.join(tiny, 'ckm3')], { lab: L.lab });
  assert.notEqual(r.code, 0);
  // Refused by the pre-flight check, which counts the checkpoints (the destination checks again at Prepare).
  assert.match(r.stderr, /E_DEST_SPACE .*its checkpoints need [\d.]+ GiB in pool 'tiny-ck' .* free; free space/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  assert.deepEqual(await fsp.readdir(tiny), [], 'nothing left on host-b');
  assert.deepEqual(await list('ckm3'), before, 'the tree is unchanged');
  assert.equal((await show('ckm3')).state, 'running');
  assert.equal((await show('ckm3')).host, 'host-a');

  // Running: the chain copied once, the active layer mirrored with sync=top, the tree there.
  const m = await ferryOk<MigrationRecord>([...args, '--json'], { lab: L.lab });
  assert.equal(m.state, 'completed', JSON.stringify(m.error));
  assert.equal(m.kind, 'shared-nothing');
  process.stdout.write(
    `# shared-nothing move with 2 checkpoints (running): ${m.totalMs} ms, downtime ${m.downtimeMs} ms, ` +
      `${chainFigures(m)}, active layer ${m.disks[0]?.bytesTotal ?? 0} bytes\n`,
  );
  const atB = await show('ckm3');
  assert.equal(atB.host, 'host-b');
  const there = await list('ckm3');
  assert.deepEqual(shape(there), shape(before));
  assert.deepEqual(same(there), same(before), 'host-b lists the same tree, ids and files');
  assert.notEqual(there.folder, before.folder);
  for (const c of there.checkpoints) for (const f of c.files) await fsp.access(path.join(there.folder, f));
  await assert.rejects(fsp.access(before.folder), 'the source chain is deleted');
  await waitProbe(L, atB, 5);
  await applyC1('ckm3', c1);

  // Stopped, back to host-a: every file of the chain copied as it is (the apply's branch too), c1 applies again.
  const applied = await list('ckm3');
  const back = await ferryOk<MigrationRecord>(['move-vm', 'ckm3', '--to', 'host-a', '--include-storage', '--json'], {
    lab: L.lab,
  });
  assert.equal(back.state, 'completed', JSON.stringify(back.error));
  process.stdout.write(
    `# shared-nothing move with the checkpoints (stopped): ${back.totalMs} ms, ${chainFigures(back)}\n`,
  );
  const home = await list('ckm3');
  assert.deepEqual(shape(home), shape(applied));
  assert.deepEqual(same(home), same(applied));
  assert.equal((await show('ckm3')).host, 'host-a');
  await applyC1('ckm3', c1);
  await ferryOk(['vm', 'rm', 'ckm3'], { lab: L.lab });
});
