// Boots the probe guest with plain QEMU (TCG), checks its serial protocol and its disk
// record log, then boots it again on the same disk to check that the writer resumes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createImage } from '../../src/qemu/img.js';
import { heartbeatGaps, parseSerial, verifyDiskImage, type SerialSummary } from '../../guest/records.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const guestDir = process.env.FERRY_GUEST_DIR ?? join(repo, '.cache/guests/probe');
const DEADLINE_MS = 60_000;

interface Guest {
  child: ChildProcess;
  log: string;
  startedAt: number;
  exited: Promise<void>;
  exitInfo: string | null;
  stderr: string;
}

function boot(disk: string, log: string): Guest {
  const child = spawn(
    'qemu-system-x86_64',
    [
      '-accel',
      'tcg',
      '-nodefaults',
      '-display',
      'none',
      '-machine',
      'pc-i440fx-7.2',
      '-cpu',
      'qemu64',
      '-m',
      '256M',
      '-kernel',
      join(guestDir, 'vmlinuz'),
      '-initrd',
      join(guestDir, 'initrd.img'),
      '-append',
      'console=ttyS0 quiet',
      '-blockdev',
      JSON.stringify({ driver: 'file', filename: disk, 'node-name': 'd0-file', cache: { direct: true } }),
      '-blockdev',
      JSON.stringify({ driver: 'qcow2', file: 'd0-file', 'node-name': 'd0' }),
      '-device',
      'virtio-blk-pci,drive=d0,id=disk0',
      '-serial',
      `file:${log}`,
      '-no-reboot',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const g: Guest = { child, log, startedAt: Date.now(), exitInfo: null, stderr: '', exited: Promise.resolve() };
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    g.stderr += d;
  });
  g.exited = new Promise((res) => {
    child.on('exit', (code, sig) => {
      g.exitInfo = `exit code ${code} signal ${sig}`;
      res();
    });
    child.on('error', (err) => {
      g.exitInfo = `spawn error: ${err.message}`;
      res();
    });
  });
  return g;
}

async function kill(g: Guest): Promise<void> {
  if (g.exitInfo === null) g.child.kill('SIGKILL');
  await g.exited;
}

async function readLog(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return '';
  }
}

/** Polls the serial log until `done` holds; fails if QEMU exits or the deadline passes. */
async function waitFor(g: Guest, what: string, done: (s: SerialSummary) => boolean): Promise<SerialSummary> {
  const end = g.startedAt + DEADLINE_MS;
  for (;;) {
    const text = await readLog(g.log);
    const s = parseSerial(text);
    if (done(s)) return s;
    if (g.exitInfo !== null)
      assert.fail(
        `QEMU exited (${g.exitInfo}) before ${what}; stderr: ${g.stderr.trim()}; serial tail: ${text.slice(-500)}`,
      );
    if (Date.now() > end) assert.fail(`no ${what} within ${DEADLINE_MS / 1000} s; serial tail: ${text.slice(-500)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('probe guest: heartbeats, acknowledged records on disk, resume after reboot', { timeout: 240_000 }, async (t) => {
  if (!existsSync(join(guestDir, 'vmlinuz')) || !existsSync(join(guestDir, 'initrd.img'))) {
    t.skip(`probe guest not built in ${guestDir}: run guest/probe/build.sh ${guestDir} (or set FERRY_GUEST_DIR)`);
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'ferry-probe-test-'));
  const guests: Guest[] = [];
  t.after(async () => {
    await Promise.all(guests.map(kill));
    await rm(dir, { recursive: true, force: true });
  });
  const disk = join(dir, 'data.qcow2');
  await createImage(disk, 'qcow2', 64 * 1024 * 1024);

  // First boot.
  const g1 = boot(disk, join(dir, 'serial1.log'));
  guests.push(g1);
  const first = await waitFor(g1, 'first heartbeat', (s) => s.heartbeats.length > 0);
  const bootMs = Date.now() - g1.startedAt;
  const s1 = await waitFor(g1, '50 heartbeats and 20 acks', (s) => s.heartbeats.length >= 50 && s.acks.length >= 20);
  await kill(g1);
  const final1 = parseSerial(await readLog(g1.log));
  t.diagnostic(
    `boot to first heartbeat: ${bootMs} ms; heartbeats ${final1.heartbeats.length}, acks ${final1.acks.length}`,
  );
  assert.ok(first.heartbeats[0]!.seq === 1, 'heartbeats start at 1');
  assert.equal(s1.writerStart, 1, 'a fresh disk starts at record 1');
  assert.equal(final1.ready, true);
  const gaps = heartbeatGaps(final1.heartbeats);
  assert.equal(gaps.resets, 0);
  assert.equal(gaps.maxSeqGap, 0);
  const ack1 = final1.highestAck;
  assert.ok(ack1 !== null && ack1 >= 20);
  // Acks are consecutive from the start.
  assert.deepEqual(
    final1.acks,
    Array.from({ length: final1.acks.length }, (_, i) => i + 1),
  );

  const r1 = await verifyDiskImage(disk, { format: 'qcow2', highestAck: ack1 });
  assert.equal(r1.ok, true, r1.problems.join('; '));
  assert.equal(r1.nslots, 16384);
  assert.ok(r1.highestSeq >= ack1);
  assert.ok(r1.highestContiguous >= ack1);

  // Second boot on the same disk: the writer resumes after the highest record.
  const g2 = boot(disk, join(dir, 'serial2.log'));
  guests.push(g2);
  const s2 = await waitFor(g2, 'writer start and 5 acks', (s) => s.writerStart !== null && s.acks.length >= 5);
  await kill(g2);
  t.diagnostic(
    `second boot: writer start=${s2.writerStart} (first boot: highest ack ${ack1}, highest record ${r1.highestSeq})`,
  );
  assert.ok(s2.writerStart! > ack1, `writer start ${s2.writerStart} is above the previous highest ack ${ack1}`);
  assert.equal(s2.writerStart, r1.highestSeq + 1);

  const final2 = parseSerial(await readLog(g2.log));
  const r2 = await verifyDiskImage(disk, { format: 'qcow2', highestAck: final2.highestAck! });
  assert.equal(r2.ok, true, r2.problems.join('; '));
});
