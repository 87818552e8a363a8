// Issue 17 item 6 end to end: a shared-nothing `move-vm` whose disk copy is cut at ~60 % (the
// destination's QEMU killed) is retried with the same command; the retry finds the partial copy
// kept on the destination and the source's bitmap, and re-sends less than half the disks. The
// probe guest writes checked records all along: every acknowledged one is on the moved disk,
// the second disk's data is intact, and exactly one QEMU runs the VM afterwards. A cut copy
// that is not retried leaves no bitmap behind: the next move or the sweep removes it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { useLab, hostData, serialLog, waitMigration, waitProbe, assertHeartbeatsContinue } from './lab.js';
import { assertMovedIntact, copiesPast, cutCopyAt, makeFillDisk } from './resume-check.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import type { LabStatus } from '../../src/lab/lab.js';
import { rootNode } from '../../src/migration/block.js';
import { markBitmap } from '../../src/migration/resume-bitmaps.js';
import { addResumeBitmap, resumeBitmapName } from '../../src/migration/resume-copy.js';
import { moveKeyOf, RESUME_MAX_AGE_MS } from '../../src/migration/resume-marker.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { SANDBOX } from '../../src/qemu/sandbox.js';
import { sleep } from '../../src/util/exec.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

const L = useLab(2);
const MiB = 1048576;
// Past half: the bitmap owes the rest plus the guest's writes (64 KiB granules), see docs/performance.md.
const CUT = 0.6;

const show = (name: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });

const qmpOf = (host: string, vm: VmView): Promise<QmpClient> =>
  QmpClient.connect(path.join(hostData(L, host), 'run', vm.id, 'qmp-admin.sock'), { vm: vm.name });

/** The bitmaps of Ferry's naming on a running VM's disks (the source's half of a cut copy). */
const ferryBitmaps = async (host: string, vm: VmView): Promise<string[]> => {
  const qmp = await qmpOf(host, vm);
  try {
    return (await qmp.execute('query-block'))
      .flatMap((b) => b.inserted?.['dirty-bitmaps'] ?? [])
      .map((b) => b.name ?? '')
      .filter((n) => n.startsWith('ferry-resume-'));
  } finally {
    qmp.close();
  }
};

/** The same of a disk no QEMU has open (qemu-img info), or of one a QEMU holds (-U). */
const storedBitmaps = (file: string): string[] => {
  const info = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', file], { encoding: 'utf8' })) as {
    'format-specific'?: { data?: { bitmaps?: Array<{ name: string }> } };
  };
  return (info['format-specific']?.data?.bitmaps ?? []).map((b) => b.name).filter((n) => n.startsWith('ferry-resume-'));
};

/** host-a's marks of the bitmaps it keeps (resume-bitmaps.ts). */
const sourceMarks = (): string[] => {
  try {
    return fs.readdirSync(path.join(hostData(L, 'host-a'), 'resume-bitmaps')).filter((f) => f.endsWith('.json'));
  } catch {
    return [];
  }
};

const markers = (host: string): string[] => {
  try {
    return fs.readdirSync(path.join(hostData(L, host), 'resume')).filter((f) => f.endsWith('.json'));
  } catch {
    return [];
  }
};

/** A running VM `name` on host-a: the probe guest on its own disk, and makeFillDisk's disk second. */
async function newVm(name: string): Promise<VmView> {
  const fill = path.join(hostData(L, 'host-a'), 'pools', 'local', `${name}-fill.qcow2`);
  makeFillDisk(fill);
  const vm = await ferryOk<VmView>(
    ['vm', 'new', name, '--host', 'host-a', '--guest', 'probe', '--disk', '64M', '--attach', fill, '--start', '--json'],
    { lab: L.lab },
  );
  await waitProbe(L, vm, 10, 90_000);
  return vm;
}

/** Cuts move `id` by host-a's agent's death (SIGKILL, then `lab up`); returns its record once it ended. */
async function cutByAgentRestart(id: string): Promise<MigrationRecord> {
  const agent = L.status.hosts.find((h) => h.name === 'host-a');
  assert.ok(agent?.agentPid);
  process.kill(agent.agentPid, 'SIGKILL');
  await sleep(500);
  L.status = await ferryOk<LabStatus>(['lab', 'up', '--dir', L.lab, '--json']);
  return waitMigration(L, id, ['failed', 'cancelled', 'completed'], 90_000);
}

/**
 * The retry of a cut move (the same command): it completes by resumable passes, both disks
 * resumed, each and all of them re-sending less than half, and the record says so. Returns the
 * record and the bytes re-sent of the disks' size.
 */
async function retryResumes(move: string[]): Promise<{ rr: MigrationRecord; resent: number; size: number }> {
  const retry = await ferry([...move, '--json'], { lab: L.lab, timeoutMs: 180_000 });
  assert.equal(retry.code, 0, `retry: ${retry.stderr}`);
  const rr = JSON.parse(retry.stdout) as MigrationRecord;
  assert.equal(rr.state, 'completed', `retry: ${JSON.stringify(rr.error)}`);
  assert.equal(rr.diskCopy, 'resumable');
  const resumed = rr.disks.filter((d) => d.resumed);
  assert.equal(resumed.length, 2, `both disks resumed: ${JSON.stringify(rr.events.map((e) => e.message))}`);
  const resent = resumed.reduce((a, d) => a + (d.resumed?.resentBytes ?? 0), 0);
  const size = resumed.reduce((a, d) => a + (d.resumed?.diskBytes ?? 0), 0);
  for (const d of resumed)
    assert.ok(
      (d.resumed?.resentBytes ?? 0) < (d.resumed?.diskBytes ?? 0) / 2,
      `disk '${d.id}': ${JSON.stringify(d.resumed)}`,
    );
  assert.ok(resent < size / 2, `re-sent ${resent} of ${size} bytes`);
  assert.ok(
    rr.events.some((e) => /copy resumed, [\d.]+ MiB re-sent of [\d.]+ MiB/.test(e.message)),
    'the record says the copy resumed',
  );
  return { rr, resent, size };
}

/**
 * A VM `name` (the probe guest, its disk and a filled second disk) on host-a, and its move to
 * host-b by resumable passes cut at CUT (host-b's QEMU killed): the move failed, the VM runs on
 * host-a, host-b keeps both partial disks. Returns the VM, the move's command and where it was cut.
 */
async function cutMove(name: string): Promise<{ vm: VmView; move: string[]; at: { done: number; total: number } }> {
  const vm = await newVm(name);
  // The disks are far under --resumable auto's 1 GiB (a short test): `always` asks for the
  // resumable copy. Only the cut move is slowed (so the cut lands inside the copy): the retry,
  // otherwise the same command, copies memory at full speed, because a Linux guest whose memory
  // moves for a minute at 4 MiB/s under TCG can die of QEMU-NOTES §E (CI saw it once).
  const move = ['move-vm', name, '--to', 'host-b', '--include-storage', '--resumable', 'always'];
  const id = (await ferryOk<string>([...move, '--bandwidth', '8', '--no-wait'], { lab: L.lab })).trim();
  const { cut, ...at } = await cutCopyAt(L, vm, id, CUT);
  assert.equal(cut.diskCopy, 'resumable');
  assert.equal((await show(name)).host, 'host-a');
  // The partial copy is kept on host-b for a retry (one marker per disk), no VM registered there.
  for (let i = 0; markers('host-b').length < 2 && i < 100; i++) await sleep(200);
  assert.equal(markers('host-b').length, 2, 'host-b keeps both partial disks');
  return { vm, move, at };
}

test(
  'a shared-nothing move cut at ~60 % resumes on retry: less than half the disks re-sent, data intact',
  {
    timeout: 240_000,
  },
  async (t) => {
    const name = 'resume1';
    const { vm, move, at } = await cutMove(name);
    const { rr, resent, size } = await retryResumes(move);
    t.diagnostic(
      `cut at ${((at.done / at.total) * 100).toFixed(0)} % ` +
        `(${(at.done / MiB).toFixed(1)} of ${(at.total / MiB).toFixed(1)} MiB); ` +
        `the retry re-sent ${(resent / MiB).toFixed(1)} MiB of ${(size / MiB).toFixed(1)} MiB ` +
        `(${((resent / size) * 100).toFixed(0)} %); downtime ${rr.downtimeMs} ms, ` +
        `${((rr.pausedBytes ?? NaN) / MiB).toFixed(1)} MiB sent paused`,
    );
    assert.ok((rr.pausedBytes ?? 0) > 0, 'the record says what the downtime was spent on');
    assert.deepEqual(markers('host-b'), [], 'the kept copies were taken over');

    // Exactly one QEMU runs the VM, on host-b; every acknowledged record on the moved disk, the
    // second disk intact.
    const logs = await assertMovedIntact(L, name, vm.id);
    assertHeartbeatsContinue(logs, ['host-a', 'host-b']);
    await ferryOk(['vm', 'rm', name], { lab: L.lab });
  },
);

// A cut copy that no retry resumes must not leave its bitmap on the source's disks (every guest
// write pays for it): the VM's next move that does not resume it removes it at its Begin
// (resume-bitmaps.ts). Here the next move copies by the mirror to the same host and keeps the
// source's files (--retain-source) so they can be read afterwards; a move to another host
// drops it the same way (the rule is "every Ferry bitmap but the one this move resumes").
test(
  'a cut copy no retry resumes: the next move (not resuming) removes its bitmap from the source disks, data intact',
  { timeout: 240_000 },
  async () => {
    const name = 'resume2';
    const { vm } = await cutMove(name);
    const left = await ferryBitmaps('host-a', vm);
    assert.equal(left.length, 2, `the cut left its bitmap on both disks: ${left.join(', ')}`);
    assert.equal(sourceMarks().length, 1, 'and marked it');
    const files = (await show(name)).disks.map((d) => d.path);
    const next = await ferry(
      ['move-vm', name, '--to', 'host-b', '--include-storage', '--resumable', 'never', '--retain-source', '--json'],
      { lab: L.lab, timeoutMs: 180_000 },
    );
    assert.equal(next.code, 0, `next move: ${next.stderr}`);
    const rec = JSON.parse(next.stdout) as MigrationRecord;
    assert.equal(rec.state, 'completed', `next move: ${JSON.stringify(rec.error)}`);
    assert.equal(rec.diskCopy, 'mirror');
    assert.ok(
      rec.events.some((e) =>
        /removed the bitmap ferry-resume-\w+ of a cut copy: this move does not resume a copy \(mirror\)/.test(
          e.message,
        ),
      ),
      `the record says the bitmap went: ${JSON.stringify(rec.events.map((e) => e.message))}`,
    );
    assert.ok(!rec.disks.some((d) => d.resumed), 'nothing resumed');
    for (const f of files) assert.deepEqual(storedBitmaps(f), [], `no Ferry bitmap left in ${f}`);
    assert.deepEqual(sourceMarks(), [], "host-a's mark went with it");
    assert.deepEqual(markers('host-b'), [], 'host-b deleted its partial copies (nothing offered them)');
    await assertMovedIntact(L, name, vm.id);
    await ferryOk(['vm', 'rm', name], { lab: L.lab });
  },
);

const storageMarkers = (): string[] => {
  try {
    return fs.readdirSync(path.join(hostData(L, 'host-a'), 'resume-storage')).filter((f) => f.endsWith('.json'));
  } catch {
    return [];
  }
};

// A storage move's resumable copy (kinds/storage-resume.ts): cut at ~60 % by the agent's death
// (its QEMU runs on), undone by the restarted agent with both partial copies kept; the same
// move-storage then copies only what the bitmap owes, the guest pauses once for its last
// writes and the switch, and every acknowledged record is on the moved disk.
test(
  'a storage move cut at ~60 % by an agent restart resumes on retry: less than half the disks re-copied, data intact',
  { timeout: 240_000 },
  async (t) => {
    const name = 'resume4';
    const vm = await newVm(name);
    const to = path.join(hostData(L, 'host-a'), 'pools', 'local', `${name}-moved`);
    const move = ['move-storage', name, '--path', to, '--resumable', 'always'];
    const id = (await ferryOk<string>([...move, '--bandwidth', '2', '--no-wait'], { lab: L.lab })).trim();
    const at = await copiesPast(L, vm, 'copy-', CUT);
    const cut = await cutByAgentRestart(id);
    assert.equal(cut.state, 'failed', `the cut move: ${JSON.stringify(cut.error)}`);
    assert.equal(cut.diskCopy, 'resumable');
    const still = await show(name);
    assert.equal(still.pid, vm.pid, 'the same QEMU runs the VM');
    assert.deepEqual(
      still.disks.map((d) => d.path),
      vm.disks.map((d) => d.path),
      'the VM keeps its disks where they were',
    );
    assert.equal(storageMarkers().length, 2, 'both partial copies are kept');

    const { rr, resent, size } = await retryResumes(move);
    t.diagnostic(
      `cut at ${((at.done / at.total) * 100).toFixed(0)} % (${(at.done / MiB).toFixed(1)} of ` +
        `${(at.total / MiB).toFixed(1)} MiB); the retry re-copied ${(resent / MiB).toFixed(1)} MiB of ` +
        `${(size / MiB).toFixed(1)} MiB; guest paused ${rr.downtimeMs} ms for ` +
        `${((rr.pausedBytes ?? NaN) / MiB).toFixed(1)} MiB`,
    );
    assert.equal(typeof rr.pausedBytes, 'number', "the disks' last pass, copied with the guest paused");
    assert.deepEqual(storageMarkers(), [], 'the kept copies were taken over');
    assert.deepEqual(sourceMarks(), [], 'the bitmap went with the move');
    const moved = await show(name);
    assert.equal(moved.pid, vm.pid, 'the same QEMU runs the VM, on its new files');
    for (const d of moved.disks) assert.equal(path.dirname(d.path), to, d.id);
    for (const d of vm.disks) assert.equal(fs.existsSync(d.path), false, `${d.path} is deleted`);
    assert.deepEqual(await ferryBitmaps('host-a', moved), [], 'no Ferry bitmap on the disks');

    await waitProbe(L, moved, 10, 60_000);
    await ferryOk(['vm', 'stop', name, '--force'], { lab: L.lab, timeoutMs: 120_000 });
    const serial = parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8'));
    assert.ok(serial.highestAck, 'the guest acknowledged records');
    const [own, fill] = moved.disks;
    assert.ok(own && fill);
    const rep = await verifyDiskImage(own.path, { format: 'qcow2', highestAck: serial.highestAck });
    assert.equal(rep.ok, true, `records: ${rep.problems.slice(0, 3).join('; ')}`);
    const read = execFileSync('qemu-io', ['-f', 'qcow2', '-r', '-c', 'read -P 0x5a 0 40M', fill.path], {
      encoding: 'utf8',
    });
    assert.doesNotMatch(read, /Pattern verification failed/);
    for (const d of moved.disks) {
      assert.deepEqual(storedBitmaps(d.path), [], `no Ferry bitmap stored in ${d.path}`);
      execFileSync('qemu-img', ['check', '-q', d.path]);
    }
    await ferryOk(['vm', 'rm', name], { lab: L.lab });
  },
);

// A stopped VM's shared-nothing copy (kinds/stopped-copy.ts): a disk daemon (QEMU, no guest) opens its
// disks and runs the same backup passes. Cut, the daemon closes cleanly (QMP quit, or SIGTERM
// from the restarted agent's undo) and stores each disk's bitmap in its qcow2; the same command
// resumes from it. The VM then starts on host-b and its guest carries on from the last record
// it acknowledged before the stop.
interface StoppedMove {
  vm: VmView;
  /** Its console before the stop (the acknowledged records). */
  before: ReturnType<typeof parseSerial>;
  move: string[];
  id: string;
  /** The daemon's folder on host-a. */
  dir: string;
}

/** A VM `name` with records written, stopped, its resumable move to host-b started (slowed). */
async function stoppedMove(name: string): Promise<StoppedMove> {
  const vm = await newVm(name);
  await ferryOk(['vm', 'stop', name, '--force'], { lab: L.lab, timeoutMs: 120_000 });
  const before = parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8'));
  assert.ok(before.highestAck, 'the guest acknowledged records before the stop');
  const move = ['move-vm', name, '--to', 'host-b', '--include-storage', '--resumable', 'always'];
  const id = (await ferryOk<string>([...move, '--bandwidth', '4', '--no-wait'], { lab: L.lab })).trim();
  return { vm, before, move, id, dir: path.join(hostData(L, 'host-a'), 'run', `copy-${id.slice(0, 8)}`) };
}

/** The flags of Ferry's bitmaps stored in an image ('in-use': not closed cleanly, unusable). */
const storedFlags = (file: string): string[][] => {
  const info = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', file], { encoding: 'utf8' })) as {
    'format-specific'?: { data?: { bitmaps?: Array<{ name: string; flags: string[] }> } };
  };
  return (info['format-specific']?.data?.bitmaps ?? [])
    .filter((b) => b.name.startsWith('ferry-resume-'))
    .map((b) => b.flags);
};

/**
 * The disk daemon copying in `dir` is a QEMU with no machine, under QEMU's seccomp sandbox as a
 * VM's QEMU (the kernel's word for it: Seccomp 2, a filter): the stopped VM's disks may sit on a
 * pool another host writes.
 */
function assertDaemonConfined(dir: string): void {
  const pids = fs
    .readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .filter((pid) => {
      try {
        return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir + '/');
      } catch {
        return false;
      }
    });
  assert.equal(pids.length, 1, `one disk daemon copies in ${dir}`);
  const argv = fs.readFileSync(`/proc/${pids[0]}/cmdline`, 'utf8').split('\0');
  assert.equal(argv[argv.indexOf('-machine') + 1], 'none', `a QEMU with no machine: ${argv.join(' ')}`);
  assert.equal(argv[argv.indexOf('-sandbox') + 1], SANDBOX, "with the sandbox of a VM's QEMU");
  assert.match(fs.readFileSync(`/proc/${pids[0]}/status`, 'utf8'), /^Seccomp:\s+2$/m, 'and it is on');
}

/** After the cut: the VM stopped on host-a, no daemon left, each bitmap stored whole, host-b keeps both copies. */
async function assertStoppedCut(m: StoppedMove, cut: MigrationRecord): Promise<void> {
  assert.equal(cut.state, 'failed', `the cut move: ${JSON.stringify(cut.error)}`);
  assert.equal(cut.diskCopy, 'resumable');
  const still = await show(m.vm.name);
  assert.equal(still.host, 'host-a');
  assert.equal(still.state, 'stopped');
  const left = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes(m.dir));
  assert.deepEqual(left, [], 'no daemon left');
  assert.equal(fs.existsSync(m.dir), false, "the daemon's folder is gone");
  for (const d of m.vm.disks)
    assert.deepEqual(storedFlags(d.path), [['auto']], `the cut's bitmap is stored whole (not in use) in ${d.path}`);
  for (let i = 0; markers('host-b').length < 2 && i < 100; i++) await sleep(200);
  assert.equal(markers('host-b').length, 2, 'host-b keeps both partial disks');
}

/** The retry resumes (retryResumes); the VM, stopped on host-b, starts there with every acknowledged record. */
async function retryStopped(m: StoppedMove, at: { done: number; total: number }): Promise<string> {
  const { rr, resent, size } = await retryResumes(m.move);
  assert.deepEqual(markers('host-b'), [], 'the kept copies were taken over');
  assert.deepEqual(sourceMarks(), [], "host-a's mark went with the move");
  const moved = await show(m.vm.name);
  assert.equal(moved.host, 'host-b');
  assert.equal(moved.state, 'stopped');
  for (const d of m.vm.disks) assert.equal(fs.existsSync(d.path), false, `${d.path} is deleted`);
  for (const d of moved.disks) {
    assert.deepEqual(storedBitmaps(d.path), [], `no Ferry bitmap in ${d.path}`);
    execFileSync('qemu-img', ['check', '-q', d.path]);
  }
  // Every record acknowledged before the stop is on the moved disk, and the guest resumes its
  // log after the last of them (the writer scans the disk at boot).
  const ack = m.before.highestAck ?? 0;
  const rep = await verifyDiskImage(moved.disks[0]!.path, { format: 'qcow2', highestAck: ack });
  assert.equal(rep.ok, true, `records: ${rep.problems.slice(0, 3).join('; ')}`);
  await ferryOk(['vm', 'start', m.vm.name], { lab: L.lab });
  const logs = await assertMovedIntact(L, m.vm.name, m.vm.id);
  const after = parseSerial(logs[1] ?? '');
  assert.ok((after.writerStart ?? 0) > ack, `the guest went on after record ${ack}: ${after.writerStart}`);
  await ferryOk(['vm', 'rm', m.vm.name], { lab: L.lab });
  return (
    `cut at ${((at.done / at.total) * 100).toFixed(0)} % (${(at.done / MiB).toFixed(1)} of ` +
    `${(at.total / MiB).toFixed(1)} MiB); the retry re-sent ${(resent / MiB).toFixed(1)} MiB of ` +
    `${(size / MiB).toFixed(1)} MiB (${((resent / size) * 100).toFixed(0)} %) in ${rr.totalMs ?? '?'} ms`
  );
}

test(
  "a stopped VM's shared-nothing move cut at ~60 % resumes on retry through the disk daemon, data intact",
  { timeout: 240_000 },
  async (t) => {
    const m = await stoppedMove('resume5');
    const { cut, ...at } = await cutCopyAt(L, m.vm, m.id, CUT, path.join(m.dir, 'qmp-admin.sock'));
    assert.ok(
      cut.events.some((e) => /disk daemon \(QEMU without a guest, sandboxed; pid \d+\) opened 2 disk/.test(e.message)),
      `the daemon read the disks: ${JSON.stringify(cut.events.map((e) => e.message))}`,
    );
    await assertStoppedCut(m, cut);
    t.diagnostic(await retryStopped(m, at));
  },
);

// The source agent killed mid-copy: the daemon (detached, so it outlives the agent) goes on
// copying until the restarted agent's undo stops it with SIGTERM, which closes the images
// cleanly: the bitmap is stored whole and the retry resumes from it.
test(
  "a stopped VM's copy cut by the source agent's death: the restart stops the daemon cleanly, the retry resumes",
  { timeout: 240_000 },
  async (t) => {
    const m = await stoppedMove('resume6');
    const at = await copiesPast(L, m.vm, 'mirror-', CUT, path.join(m.dir, 'qmp-admin.sock'));
    assertDaemonConfined(m.dir);
    const cut = await cutByAgentRestart(m.id);
    await assertStoppedCut(m, cut);
    t.diagnostic(await retryStopped(m, at));
  },
);

// A stopped VM's storage move (storage-resume.ts through the daemon): cut by the agent's death,
// the restart stops the daemon cleanly and keeps both copies; the same move-storage resumes
// them, and the VM starts from its new files with every record it acknowledged before the stop.
test(
  "a stopped VM's storage move cut by an agent restart resumes on retry through the disk daemon, data intact",
  { timeout: 240_000 },
  async (t) => {
    const name = 'resume7';
    const vm = await newVm(name);
    await ferryOk(['vm', 'stop', name, '--force'], { lab: L.lab, timeoutMs: 120_000 });
    const before = parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8'));
    const ack = before.highestAck ?? 0;
    assert.ok(ack, 'the guest acknowledged records before the stop');
    const to = path.join(hostData(L, 'host-a'), 'pools', 'local', `${name}-moved`);
    const move = ['move-storage', name, '--path', to, '--resumable', 'always'];
    const id = (await ferryOk<string>([...move, '--bandwidth', '4', '--no-wait'], { lab: L.lab })).trim();
    const dir = path.join(hostData(L, 'host-a'), 'run', `copy-${id.slice(0, 8)}`);
    const at = await copiesPast(L, vm, 'copy-', CUT, path.join(dir, 'qmp-admin.sock'));
    const cut = await cutByAgentRestart(id);
    assert.equal(cut.state, 'failed', `the cut move: ${JSON.stringify(cut.error)}`);
    assert.equal(cut.diskCopy, 'resumable');
    const still = await show(name);
    assert.equal(still.state, 'stopped');
    assert.deepEqual(
      still.disks.map((d) => d.path),
      vm.disks.map((d) => d.path),
      'the VM keeps its disks where they were',
    );
    assert.equal(fs.existsSync(dir), false, "the daemon's folder is gone");
    for (const d of vm.disks)
      assert.deepEqual(storedFlags(d.path), [['auto']], `the cut's bitmap is stored whole in ${d.path}`);
    assert.equal(storageMarkers().length, 2, 'both partial copies are kept');

    const { rr, resent, size } = await retryResumes(move);
    t.diagnostic(
      `cut at ${((at.done / at.total) * 100).toFixed(0)} % (${(at.done / MiB).toFixed(1)} of ` +
        `${(at.total / MiB).toFixed(1)} MiB); the retry re-copied ${(resent / MiB).toFixed(1)} MiB of ` +
        `${(size / MiB).toFixed(1)} MiB in ${rr.totalMs ?? '?'} ms`,
    );
    assert.deepEqual(storageMarkers(), [], 'the kept copies were taken over');
    assert.deepEqual(sourceMarks(), [], 'the bitmap went with the move');
    const moved = await show(name);
    for (const d of moved.disks) {
      assert.equal(path.dirname(d.path), to, d.id);
      assert.deepEqual(storedBitmaps(d.path), [], `no Ferry bitmap in ${d.path}`);
      execFileSync('qemu-img', ['check', '-q', d.path]);
    }
    for (const d of vm.disks) assert.equal(fs.existsSync(d.path), false, `${d.path} is deleted`);
    const [own, fill] = moved.disks;
    assert.ok(own && fill);
    const rep = await verifyDiskImage(own.path, { format: 'qcow2', highestAck: ack });
    assert.equal(rep.ok, true, `records: ${rep.problems.slice(0, 3).join('; ')}`);
    const read = execFileSync('qemu-io', ['-f', 'qcow2', '-r', '-c', 'read -P 0x5a 0 40M', fill.path], {
      encoding: 'utf8',
    });
    assert.doesNotMatch(read, /Pattern verification failed/);
    // It starts from its new files, its guest going on after the last record acknowledged.
    await ferryOk(['vm', 'start', name], { lab: L.lab });
    const started = await show(name);
    await waitProbe(L, started, 5, 60_000);
    const after = parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8'));
    assert.ok((after.writerStart ?? 0) > ack, `the guest went on after record ${ack}: ${after.writerStart}`);
    await ferryOk(['vm', 'stop', name, '--force'], { lab: L.lab, timeoutMs: 120_000 });
    await ferryOk(['vm', 'rm', name], { lab: L.lab });
  },
);

// The sweep (resume-bitmaps.ts): at agent start and at VM start, bitmaps of Ferry's naming
// older than the destination's kept copies live (24 h, RESUME_MAX_AGE_MS), or without a mark,
// go; a young one stays (a retry may still resume it), also stored over a VM stop. Last in the
// file: it restarts host-a's agent.
test(
  'the sweep at agent start and at VM start removes expired bitmaps of cut copies and keeps young ones, data intact',
  { timeout: 180_000 },
  async () => {
    const name = 'resume3';
    const vm = await newVm(name);
    const data = hostData(L, 'host-a');
    const old = resumeBitmapName(moveKeyOf(vm.id, 'host-a', 'host-x'));
    const young = resumeBitmapName(moveKeyOf(vm.id, 'host-a', 'host-b'));
    // As cut copies leave them: persistent on every disk, marked when kept.
    const qmp = await qmpOf('host-a', vm);
    try {
      for (const d of vm.disks) {
        const node = await rootNode(qmp, d.id);
        for (const b of [old, young]) await addResumeBitmap(qmp, node, b, 'qcow2');
      }
    } finally {
      qmp.close();
    }
    await markBitmap(data, vm.id, old, new Date(Date.now() - RESUME_MAX_AGE_MS - 60_000));
    await markBitmap(data, vm.id, young);

    // Agent start: the VM keeps running, the agent re-attaches and sweeps.
    const host = L.status.hosts.find((h) => h.name === 'host-a');
    assert.ok(host?.agentPid);
    process.kill(host.agentPid, 'SIGKILL');
    await sleep(1000);
    L.status = await ferryOk<LabStatus>(['lab', 'up', '--dir', L.lab, '--json']);
    assert.equal((await show(name)).pid, vm.pid, 'the same QEMU runs the VM');
    assert.deepEqual(await ferryBitmaps('host-a', vm), [young, young], 'the expired one went, the young one stays');
    assert.deepEqual(sourceMarks(), [`${vm.id}--${young}.json`]);

    // Stopped, the young one is stored in the images; the records the guest acknowledged are there.
    await waitProbe(L, vm, 10, 60_000);
    await ferryOk(['vm', 'stop', name, '--force'], { lab: L.lab, timeoutMs: 120_000 });
    for (const d of vm.disks) assert.deepEqual(storedBitmaps(d.path), [young], d.id);
    const serial = parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8'));
    assert.ok(serial.highestAck);
    const rep = await verifyDiskImage(vm.disks[0]!.path, { format: 'qcow2', highestAck: serial.highestAck });
    assert.equal(rep.ok, true, `records: ${rep.problems.slice(0, 3).join('; ')}`);

    // A day later (its mark aged): the VM's start sweeps it.
    await markBitmap(data, vm.id, young, new Date(Date.now() - RESUME_MAX_AGE_MS - 60_000));
    await ferryOk(['vm', 'start', name], { lab: L.lab });
    const started = await show(name);
    assert.deepEqual(await ferryBitmaps('host-a', started), [], 'swept at VM start');
    assert.deepEqual(sourceMarks(), []);
    await ferryOk(['vm', 'stop', name, '--force'], { lab: L.lab, timeoutMs: 120_000 });
    for (const d of vm.disks) {
      assert.deepEqual(storedBitmaps(d.path), [], `no Ferry bitmap left in ${d.path}`);
      execFileSync('qemu-img', ['check', '-q', d.path]);
    }
    const read = execFileSync('qemu-io', ['-f', 'qcow2', '-r', '-c', 'read -P 0x5a 0 40M', vm.disks[1]!.path], {
      encoding: 'utf8',
    });
    assert.doesNotMatch(read, /Pattern verification failed/);
    await ferryOk(['vm', 'rm', name], { lab: L.lab });
  },
);
