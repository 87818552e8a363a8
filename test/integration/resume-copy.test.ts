// Issue 17 item 6 at the QMP level: a running VM's disk copy over NBD is cut at about half
// (the destination QEMU is killed), the source keeps running and keeps writing, a new
// destination QEMU reopens the kept partial image, and the copy resumes from the source's
// bitmap: it re-sends less than half the disk, and the copy is then identical to the source
// (every write the guest made before, during and after the cut is there).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { QmpClient } from '../../src/qemu/qmp.js';
import { QEMU_BINARY } from '../../src/qemu/process.js';
import {
  addResumeBitmap,
  bitmapState,
  catchUp,
  removeResumeBitmap,
  resumeBitmapName,
  startBackup,
  waitBackup,
  type BackupSpec,
} from '../../src/migration/resume-copy.js';
import { FerryError } from '../../src/errors.js';
import { listBitmaps, removeBitmap } from '../../src/qemu/img.js';
import {
  bitmapMarks,
  dropLeftBehind,
  dropStoredLeftBehind,
  markBitmap,
  sweepBitmaps,
} from '../../src/migration/resume-bitmaps.js';
import { moveKeyOf, RESUME_MAX_AGE_MS } from '../../src/migration/resume-marker.js';
import { tempDir, testPools } from '../helpers.js';

const run = promisify(execFile);
const MiB = 1048576;
const SIZE = 128 * MiB;
// "About half": the bitmap then owes the other ~45 % plus what the guest wrote since the start.
const CUT = 0.55;

function qemu(dir: string, name: string, image: string, extra: string[]): ChildProcess {
  return spawn(
    QEMU_BINARY,
    [
      ...['-nodefaults', '-display', 'none', '-machine', 'pc-i440fx-7.2', '-accel', 'tcg', '-m', '32M', '-S'],
      ...['-qmp', `unix:${path.join(dir, `${name}.qmp`)},server=on,wait=off`],
      ...['-blockdev', JSON.stringify({ driver: 'file', filename: image, 'node-name': 'disk0-file' })],
      ...['-blockdev', JSON.stringify({ driver: 'qcow2', file: 'disk0-file', 'node-name': 'disk0' })],
      ...['-device', 'ide-hd,drive=disk0,id=ide0'],
      ...extra,
    ],
    { stdio: 'ignore' },
  );
}

test('a disk copy cut at ~55 % resumes from the bitmap: less than half re-sent, the copy identical', async (t) => {
  const dir = await tempDir(t);
  const src = path.join(dir, 'src.qcow2');
  const dst = path.join(dir, 'dst.qcow2');
  const sock = path.join(dir, 'nbd.sock');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', src, String(SIZE)]);
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x11 0 ${SIZE}`, src]);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', dst, String(SIZE)]);
  const procs: ChildProcess[] = [];
  t.after(() => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  });

  const startDest = async (): Promise<{ proc: ChildProcess; qmp: QmpClient }> => {
    const proc = qemu(dir, 'dst', dst, ['-incoming', 'defer']);
    procs.push(proc);
    const qmp = await QmpClient.connect(path.join(dir, 'dst.qmp'), { vm: 'dst' });
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
    await qmp.execute('block-export-add', {
      type: 'nbd',
      id: 'exp-disk0',
      'node-name': 'disk0',
      name: 'disk0',
      writable: true,
      writethrough: true,
    });
    return { proc, qmp };
  };
  const sp = qemu(dir, 'src', src, []);
  procs.push(sp);
  const sq = await QmpClient.connect(path.join(dir, 'src.qmp'), { vm: 'src' });
  await sq.execute('cont');
  // The guest's writes, each a checked pattern at its own offset.
  const written = new Map<number, number>();
  const write = async (offset: number, pattern: number): Promise<void> => {
    await sq.execute('human-monitor-command', {
      'command-line': `qemu-io -d ide0 "write -P ${pattern} ${offset} 64k"`,
    });
    written.set(offset, pattern);
  };
  const bitmap = resumeBitmapName('test-move');
  const pass = async (sync: BackupSpec['sync'], speed: number | undefined, cutAt?: () => void) => {
    await sq.execute('blockdev-add', {
      driver: 'nbd',
      'node-name': 'mig-disk0',
      export: 'disk0',
      server: { type: 'unix', path: sock },
    });
    const b: BackupSpec = { jobId: 'copy-disk0', diskId: 'disk0', device: 'disk0', target: 'mig-disk0', bitmap, sync };
    await startBackup(sq, b, speed);
    let cut = false;
    try {
      return await waitBackup(
        sq,
        b,
        (j) => {
          if (cutAt && !cut && j['current-progress'] >= j['total-progress'] * CUT) {
            cut = true;
            cutAt();
          }
        },
        { timeoutMs: 120_000 },
      );
    } finally {
      await sq.execute('blockdev-del', { 'node-name': 'mig-disk0' }).catch(() => undefined);
    }
  };

  let dest = await startDest();
  await addResumeBitmap(sq, 'disk0', bitmap, 'qcow2');
  // First attempt at 32 MiB/s; the guest writes during it; the destination dies at half.
  const writer = (async () => {
    for (let i = 0; i < 8; i++) {
      await write(i * 15 * MiB + 4096 * i, 0x30 + i);
      await new Promise((r) => setTimeout(r, 150));
    }
  })();
  const first = dest;
  let cutAtBytes = 0;
  await assert.rejects(
    pass('full', 32 * MiB, () => first.proc.kill('SIGKILL')),
    (e: FerryError) => {
      cutAtBytes = Number(e.context.copied);
      return e.code === 'E_MIRROR_FAILED' && /resumes/.test(e.message);
    },
  );
  await writer;
  // The source VM still runs, and keeps writing while no destination is there.
  assert.equal((await sq.execute('query-status')).running, true);
  await write(SIZE - MiB, 0x77);
  const left = await bitmapState(sq, 'disk0', bitmap);
  if (left.state !== 'ready') assert.fail(`the bitmap is ${left.state} after the cut`);
  const owed = left.dirtyBytes;
  assert.ok(owed < SIZE, `the bitmap owes ${owed} of ${SIZE} bytes`);

  // Retry to a new destination QEMU on the kept image: only the bitmap moves.
  dest = await startDest();
  const resumed = await pass('bitmap', undefined);
  assert.ok(resumed.copied < SIZE / 2, `resumed copy re-sent ${resumed.copied} bytes of ${SIZE}`);
  t.diagnostic(
    `cut after ${(cutAtBytes / MiB).toFixed(1)} MiB of ${SIZE / MiB} MiB: the resumed copy re-sent ` +
      `${(resumed.copied / MiB).toFixed(1)} MiB (the bitmap owed ${(owed / MiB).toFixed(1)} MiB)`,
  );
  // Writes after the resumed pass: incremental passes while the guest runs, then the last one
  // with the guest paused (the switch-over pass).
  await write(3 * MiB, 0x5a);
  await write(50 * MiB, 0x5b);
  const addTarget = async (): Promise<void> => {
    await sq.execute('blockdev-add', {
      driver: 'nbd',
      'node-name': 'mig-disk0',
      export: 'disk0',
      server: { type: 'unix', path: sock },
    });
  };
  const delTarget = () => sq.execute('blockdev-del', { 'node-name': 'mig-disk0' }).then(() => undefined);
  const caught = await catchUp(
    sq,
    { jobId: 'copy-disk0', diskId: 'disk0', device: 'disk0', target: 'mig-disk0', bitmap },
    { smallBytes: 0, maxPasses: 3, addTarget, delTarget, timeoutMs: 60_000 },
  );
  assert.deepEqual(caught, { passes: 1, copied: 128 * 1024, owed: 0 });
  await write(7 * MiB, 0x99);
  await sq.execute('stop');
  const last = await pass('bitmap', undefined);
  assert.equal(last.copied, 64 * 1024);
  assert.deepEqual(await bitmapState(sq, 'disk0', bitmap), { state: 'ready', dirtyBytes: 0, persistent: true });
  await removeResumeBitmap(sq, 'disk0', bitmap);
  assert.deepEqual(await bitmapState(sq, 'disk0', bitmap), { state: 'absent' });

  await dest.qmp.execute('quit').catch(() => undefined);
  await sq.execute('quit').catch(() => undefined);
  // A process killed by a signal has exitCode null too: ask signalCode as well.
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) await new Promise((r) => p.once('exit', r));
  const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', src, dst]);
  assert.match(cmp.stdout, /identical/);
  for (const [offset, pattern] of written) {
    const r = await run('qemu-io', ['-f', 'qcow2', '-r', '-c', `read -P ${pattern} ${offset} 64k`, dst]);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/, `offset ${offset}`);
  }
});

// The bitmap stays through switch-over (backup-copy.ts lastPass): a stream that fails after the
// last pass (the destination gone while the device state is sent) leaves the source running
// with a bitmap that records its writes from then on, so a retry re-sends only those. A move
// that completes can still remove the bitmap from the source's (by then inactive) image.
test('a stream that fails after the last pass still resumes; a completed one drops the bitmap', async (t) => {
  const dir = await tempDir(t);
  const src = path.join(dir, 'src.qcow2');
  const dst = path.join(dir, 'dst.qcow2');
  const sock = path.join(dir, 'nbd.sock');
  const size = 32 * MiB;
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', src, String(size)]);
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x21 0 ${8 * MiB}`, src]);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', dst, String(size)]);
  const procs: ChildProcess[] = [];
  t.after(() => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  });
  let n = 0;
  const startDest = async (): Promise<{ proc: ChildProcess; qmp: QmpClient; mig: string }> => {
    const id = `dst${n++}`;
    const proc = qemu(dir, id, dst, ['-incoming', 'defer']);
    procs.push(proc);
    const qmp = await QmpClient.connect(path.join(dir, `${id}.qmp`), { vm: id });
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
    await qmp.execute('block-export-add', {
      type: 'nbd',
      id: 'exp-disk0',
      'node-name': 'disk0',
      name: 'disk0',
      writable: true,
      writethrough: true,
    });
    const mig = path.join(dir, `${id}.mig`);
    await qmp.execute('migrate-incoming', { uri: `unix:${mig}` });
    return { proc, qmp, mig };
  };
  const sp = qemu(dir, 'src', src, []);
  procs.push(sp);
  const sq = await QmpClient.connect(path.join(dir, 'src.qmp'), { vm: 'src' });
  await sq.execute('cont');
  const write = (offset: number, pattern: number) =>
    sq.execute('human-monitor-command', { 'command-line': `qemu-io -d ide0 "write -P ${pattern} ${offset} 64k"` });
  const bitmap = resumeBitmapName('test-switch');
  const b: BackupSpec = {
    jobId: 'copy-disk0',
    diskId: 'disk0',
    device: 'disk0',
    target: 'mig-disk0',
    bitmap,
    sync: 'full',
  };
  const pass = async (sync: BackupSpec['sync']) => {
    await sq.execute('blockdev-add', {
      driver: 'nbd',
      'node-name': 'mig-disk0',
      export: 'disk0',
      server: { type: 'unix', path: sock },
    });
    try {
      await startBackup(sq, { ...b, sync }, undefined);
      return await waitBackup(sq, { ...b, sync }, () => undefined, { timeoutMs: 60_000 });
    } finally {
      await sq.execute('blockdev-del', { 'node-name': 'mig-disk0' }).catch(() => undefined);
    }
  };
  const status = async (want: string[]): Promise<string> => {
    for (let i = 0; i < 600; i++) {
      const st = (await sq.execute('query-migrate')).status ?? 'none';
      if (want.includes(st)) return st;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.fail(`the stream never reached ${want.join('/')}`);
  };
  await sq.execute('migrate-set-capabilities', {
    capabilities: [
      { capability: 'events', state: true },
      { capability: 'pause-before-switchover', state: true },
    ],
  });

  // The first move: full pass, the guest writes, memory copy, the last pass with the guest paused.
  let dest = await startDest();
  await addResumeBitmap(sq, 'disk0', bitmap, 'qcow2');
  await pass('full');
  await write(2 * MiB, 0x31);
  await sq.execute('migrate', { uri: `unix:${dest.mig}` });
  await status(['pre-switchover']);
  assert.equal((await pass('bitmap')).copied, 64 * 1024, 'the last pass sends the write');
  assert.deepEqual(await bitmapState(sq, 'disk0', bitmap), { state: 'ready', dirtyBytes: 0, persistent: true });
  // The destination dies before the device state is through: the stream fails after the last pass.
  dest.proc.kill('SIGKILL');
  await new Promise((r) => dest.proc.once('exit', r));
  await sq.execute('migrate-continue', { state: 'pre-switchover' });
  assert.equal(await status(['failed', 'completed', 'cancelled']), 'failed');
  await sq.execute('cont');
  assert.equal((await sq.execute('query-status')).running, true);
  await write(20 * MiB, 0x32);
  const left = await bitmapState(sq, 'disk0', bitmap);
  assert.deepEqual(left, { state: 'ready', dirtyBytes: 64 * 1024, persistent: true }, 'the bitmap owes the new write');

  // The retry on the kept image re-sends only that write, and this time the stream completes.
  dest = await startDest();
  assert.equal((await pass('bitmap')).copied, 64 * 1024);
  await sq.execute('migrate', { uri: `unix:${dest.mig}` });
  await status(['pre-switchover']);
  assert.equal((await pass('bitmap')).copied, 0);
  await sq.execute('migrate-continue', { state: 'pre-switchover' });
  assert.equal(await status(['failed', 'completed', 'cancelled']), 'completed');
  // Completed: the source's node is inactive, QEMU stored the bitmap in the image and let go of
  // it (so removing it in QEMU is a no-op); once QEMU quit it is removed from the file
  // (dropStoredBitmaps, for a --retain-source image).
  assert.deepEqual(await bitmapState(sq, 'disk0', bitmap), { state: 'absent' });
  await dest.qmp.execute('quit').catch(() => undefined);
  await sq.execute('quit').catch(() => undefined);
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) await new Promise((r) => p.once('exit', r));
  const stored = async (): Promise<string[]> => {
    const info = JSON.parse((await run('qemu-img', ['info', '-U', '--output=json', src])).stdout) as {
      'format-specific'?: { data?: { bitmaps?: Array<{ name: string }> } };
    };
    return (info['format-specific']?.data?.bitmaps ?? []).map((x) => x.name);
  };
  assert.deepEqual(await stored(), [bitmap]);
  await removeBitmap(src, bitmap);
  assert.deepEqual(await stored(), [], 'no bitmap left in the source image');
  const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', src, dst]);
  assert.match(cmp.stdout, /identical/);
});

// A cut copy that no retry resumes must not leave its bitmap on the source's disk (every guest
// write updates it): resume-bitmaps.ts drops it at the Begin of the VM's next move unless that
// move resumes it, and sweeps it at VM or agent start once it is as old as the destination's
// kept copy may be (24 h), has no mark, or is inconsistent. An operator's own bitmap is never
// touched, and the disk's data stays as it was.
test('bitmaps of cut copies: dropped by the next move and the sweep, live and stored; the data intact', async (t) => {
  const dir = await tempDir(t);
  const data = path.join(dir, 'data');
  const src = path.join(dir, 'src.qcow2');
  const size = 32 * MiB;
  const vmId = 'vm-sweep';
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', src, String(size)]);
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x41 0 ${8 * MiB}`, src]);
  const procs: ChildProcess[] = [];
  t.after(() => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  });
  let n = 0;
  const start = async (): Promise<QmpClient> => {
    const id = `src${n++}`;
    const p = qemu(dir, id, src, []);
    procs.push(p);
    const qmp = await QmpClient.connect(path.join(dir, `${id}.qmp`), { vm: id });
    await qmp.execute('cont');
    return qmp;
  };
  const quit = async (qmp: QmpClient): Promise<void> => {
    await qmp.execute('quit').catch(() => undefined);
    for (const p of procs)
      if (p.exitCode === null && p.signalCode === null) await new Promise((r) => p.once('exit', r));
  };
  const live = async (qmp: QmpClient): Promise<string[]> =>
    (await qmp.execute('query-block'))
      .flatMap((b) => b.inserted?.['dirty-bitmaps'] ?? [])
      .map((b) => b.name ?? '')
      .sort();
  const stored = async (): Promise<string[]> => (await listBitmaps(src)).sort();
  const toB = resumeBitmapName(moveKeyOf(vmId, 'host-a', 'host-b'));
  const toC = resumeBitmapName(moveKeyOf(vmId, 'host-a', 'host-c'));
  const theirs = 'operator-incremental';
  const write = (qmp: QmpClient, offset: number, pattern: number) =>
    qmp.execute('human-monitor-command', { 'command-line': `qemu-io -d ide0 "write -P ${pattern} ${offset} 64k"` });

  // Two cut copies' bitmaps (to B a moment ago, to C a day and a minute ago) and an operator's.
  let sq = await start();
  for (const name of [toB, toC, theirs]) await addResumeBitmap(sq, 'disk0', name, 'qcow2');
  await markBitmap(data, vmId, toB);
  await markBitmap(data, vmId, toC, new Date(Date.now() - RESUME_MAX_AGE_MS - 60_000));
  await write(sq, 16 * MiB, 0x42);
  // The sweep: the one to C is past the destination markers' age; B's may still be resumed.
  const ms = (t0: number): string => `${(performance.now() - t0).toFixed(1)} ms`;
  let t0 = performance.now();
  assert.deepEqual(await sweepBitmaps(sq, data, vmId), [toC]);
  const tSweep = ms(t0);
  assert.deepEqual(await live(sq), [theirs, toB].sort());
  // A resumable retry to B keeps its own; the next move that resumes nothing drops it.
  t0 = performance.now();
  assert.deepEqual(await dropLeftBehind(sq, data, vmId, toB), [], 'nothing to drop');
  const tNone = ms(t0);
  t0 = performance.now();
  assert.deepEqual(await dropLeftBehind(sq, data, vmId, null), [toB]);
  const tLive = ms(t0);
  assert.deepEqual(await live(sq), [theirs]);
  assert.deepEqual([...(await bitmapMarks(data, vmId)).keys()], [], 'their marks went with them');

  // Stored in the image over a restart: a bitmap without a mark is swept when the VM starts.
  await addResumeBitmap(sq, 'disk0', toC, 'qcow2');
  await quit(sq);
  assert.deepEqual(await stored(), [theirs, toC].sort());
  sq = await start();
  assert.deepEqual(await sweepBitmaps(sq, data, vmId), [toC]);
  await write(sq, 20 * MiB, 0x43);
  // A stopped VM's move: dropped from the image with qemu-img.
  await addResumeBitmap(sq, 'disk0', toB, 'qcow2');
  await quit(sq);
  assert.deepEqual(await stored(), [theirs, toB].sort());
  t0 = performance.now();
  assert.deepEqual(
    await dropStoredLeftBehind([{ path: src, format: 'qcow2' }], data, vmId, null, { pools: testPools(dir) }),
    [toB],
  );
  t.diagnostic(
    `sweep (one removed) ${tSweep}; a move's Begin: nothing to drop ${tNone}, one over QMP ${tLive}, ` +
      `one from a stopped VM's image ${ms(t0)}`,
  );
  assert.deepEqual(await stored(), [theirs], 'no Ferry bitmap left on the disk');

  await run('qemu-img', ['check', '-q', src]);
  for (const [offset, pattern, len] of [
    [0, 0x41, 8 * MiB],
    [16 * MiB, 0x42, 64 * 1024],
    [20 * MiB, 0x43, 64 * 1024],
  ] as const) {
    const r = await run('qemu-io', ['-f', 'qcow2', '-r', '-c', `read -P ${pattern} ${offset} ${len}`, src]);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/, `offset ${offset}`);
  }
});
