import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import {
  RECORD_SIZE,
  MAX_LOG_BYTES,
  makeRecord,
  parseRecord,
  verifyLog,
  parseSerial,
  heartbeatGaps,
  splitHeartbeats,
  highestAckIn,
} from '../../guest/records.js';

/** A log of `nslots` slots holding records 1..count (later records overwrite earlier ones). */
function makeLog(nslots: number, count: number): Buffer {
  const raw = Buffer.alloc(nslots * RECORD_SIZE);
  for (let s = 1; s <= count; s++) makeRecord(s, nslots).copy(raw, (s % nslots) * RECORD_SIZE);
  return raw;
}

function slotOf(raw: Buffer, seq: number, nslots: number): Buffer {
  const slot = seq % nslots;
  return raw.subarray(slot * RECORD_SIZE, (slot + 1) * RECORD_SIZE);
}

test('constants', () => {
  assert.equal(RECORD_SIZE, 4096);
  assert.equal(MAX_LOG_BYTES, 64 * 1024 * 1024);
});

test('makeRecord has the documented layout', () => {
  const r = makeRecord(7, 16384);
  assert.equal(r.length, 4096);
  assert.equal(r.subarray(0, 8).toString('latin1'), 'FERRYREC');
  assert.equal(r.readBigUInt64LE(8), 7n);
  assert.equal(r.readUInt32LE(16), 16384);
  assert.equal(r.readUInt32LE(20), 0);
  // First payload word: xorshift32 step from the seed seq ^ (seq >> 32) ^ 0x9E3779B9.
  let x = (7 ^ 0x9e3779b9) >>> 0;
  x = (x ^ (x << 13)) >>> 0;
  x = (x ^ (x >>> 17)) >>> 0;
  x = (x ^ (x << 5)) >>> 0;
  assert.equal(r.readUInt32LE(24), x);
  assert.equal(r.readUInt32LE(4092), crc32(r.subarray(0, 4092)));
  // Large seqs (above 2^32) are fine too.
  assert.equal(makeRecord(2 ** 40 + 3, 16).readBigUInt64LE(8), 2n ** 40n + 3n);
});

test('makeRecord/parseRecord roundtrip', () => {
  for (const [seq, n] of [
    [1, 16],
    [16, 16],
    [12345, 16384],
    [2 ** 33 + 5, 64],
  ] as const) {
    const r = makeRecord(seq, n);
    assert.deepEqual(parseRecord(r, seq % n), { seq, nslots: n });
    assert.deepEqual(parseRecord(r, seq % n, n), { seq, nslots: n });
    assert.equal(parseRecord(r, (seq + 1) % n), null, 'wrong slot');
    assert.equal(parseRecord(r, seq % n, n * 2), null, 'wrong nslots');
  }
  assert.equal(parseRecord(Buffer.alloc(4096), 0), null, 'zeros');
  const bad = makeRecord(3, 16);
  bad[100] = bad[100]! ^ 1;
  assert.equal(parseRecord(bad, 3), null, 'bad crc');
  // Payload damage with a recomputed CRC is still caught.
  bad.writeUInt32LE(crc32(bad.subarray(0, 4092)), 4092);
  assert.equal(parseRecord(bad, 3), null, 'bad payload');
});

test('verifyLog: all good', () => {
  const raw = makeLog(64, 50);
  const r = verifyLog(raw, { highestAck: 50 });
  assert.equal(r.nslots, 64);
  assert.equal(r.highestSeq, 50);
  assert.equal(r.lowestExpected, 1);
  assert.equal(r.highestContiguous, 50);
  assert.deepEqual(r.missing, []);
  assert.deepEqual(r.corrupt, []);
  assert.equal(r.highestAck, 50);
  assert.equal(r.ok, true);
  assert.deepEqual(r.problems, []);
  const noAck = verifyLog(raw);
  assert.equal(noAck.highestAck, null);
  assert.equal(noAck.ok, true);
});

test('verifyLog: a record missing below the ack is not ok', () => {
  const raw = makeLog(64, 50);
  slotOf(raw, 20, 64).fill(0);
  const r = verifyLog(raw, { highestAck: 45 });
  assert.equal(r.ok, false);
  assert.deepEqual(r.missing, [20]);
  assert.deepEqual(r.corrupt, []);
  assert.equal(r.highestContiguous, 19);
  assert.ok(
    r.problems.some((p) => p.includes('record 20 acknowledged but missing')),
    r.problems.join('; '),
  );
});

test('verifyLog: a corrupt record below the ack is not ok', () => {
  const raw = makeLog(64, 50);
  const b30 = slotOf(raw, 30, 64);
  b30[2000] = b30[2000]! ^ 0xff;
  const r = verifyLog(raw, { highestAck: 50 });
  assert.equal(r.ok, false);
  assert.deepEqual(r.corrupt, [30]);
  assert.ok(
    r.problems.some((p) => p.includes('record 30 acknowledged but corrupt')),
    r.problems.join('; '),
  );
});

test('verifyLog: a torn record above the ack is ok', () => {
  const raw = makeLog(64, 50);
  // Record 50 half written: its second half still zeros.
  slotOf(raw, 50, 64).fill(0, 2048);
  const r = verifyLog(raw, { highestAck: 49 });
  assert.equal(r.highestSeq, 49, 'the torn record is not valid');
  assert.equal(r.ok, true);
  assert.equal(r.highestContiguous, 49);
  assert.deepEqual(r.problems, []);
  // A torn record between valid ones, above the ack: listed, still ok.
  const raw2 = makeLog(64, 50);
  slotOf(raw2, 48, 64).fill(0, 512);
  const r2 = verifyLog(raw2, { highestAck: 47 });
  assert.equal(r2.ok, true);
  assert.deepEqual(r2.corrupt, [48]);
  assert.equal(r2.highestContiguous, 47);
  // But an ack beyond what the disk holds is not.
  const r3 = verifyLog(raw, { highestAck: 50 });
  assert.equal(r3.ok, false);
  assert.ok(
    r3.problems.some((p) => p.includes('record 50 acknowledged')),
    r3.problems.join('; '),
  );
});

test('verifyLog: wrap-around with nslots=16 and 40 records', () => {
  const raw = makeLog(16, 40);
  const r = verifyLog(raw, { highestAck: 40 });
  assert.equal(r.nslots, 16);
  assert.equal(r.highestSeq, 40);
  assert.equal(r.lowestExpected, 25);
  assert.equal(r.highestContiguous, 40);
  assert.equal(r.ok, true);
  // Acks that were overwritten by the wrap are fine.
  assert.equal(verifyLog(raw, { highestAck: 10 }).ok, true);
  // Slot of 30 still holding the old record 14: corrupt (wrong seq), not ok when acknowledged.
  makeRecord(14, 16).copy(raw, (30 % 16) * RECORD_SIZE);
  const bad = verifyLog(raw, { highestAck: 40 });
  assert.equal(bad.ok, false);
  assert.deepEqual(bad.corrupt, [30]);
  assert.equal(bad.highestContiguous, 29);
  assert.ok(
    bad.problems.some((p) => /record 30 acknowledged but corrupt .*holds record 14/.test(p)),
    bad.problems.join('; '),
  );
});

test('verifyLog: empty disk', () => {
  const raw = Buffer.alloc(16 * RECORD_SIZE);
  const r = verifyLog(raw);
  assert.equal(r.nslots, 0);
  assert.equal(r.highestSeq, 0);
  assert.equal(r.highestContiguous, 0);
  assert.equal(r.ok, true);
  const acked = verifyLog(raw, { highestAck: 3 });
  assert.equal(acked.ok, false);
  assert.ok(acked.problems.some((p) => p.includes('no valid records')));
});

test('verifyLog: records that disagree on nslots are reported', () => {
  const raw = makeLog(16, 10);
  makeRecord(33, 32).copy(raw, 1 * RECORD_SIZE); // 33 % 32 = 1
  const r = verifyLog(raw, { highestAck: 10 });
  assert.equal(r.nslots, 16);
  assert.ok(r.problems.some((p) => p.includes('disagree')));
});

test('verifyLog: lists are capped at 1000', () => {
  const n = 4096;
  const raw = makeLog(n, 3000);
  for (let s = 1; s < 2999; s++) slotOf(raw, s, n).fill(0);
  const r = verifyLog(raw, { highestAck: 3000 });
  assert.equal(r.missing.length, 1000);
  assert.equal(r.ok, false);
  assert.ok(r.problems.some((p) => p.includes('truncated')));
});

test('parseSerial: kernel noise, \\r and a partial last line', () => {
  const text = [
    '[    0.000000] Linux version 6.1.0-57-cloud-amd64',
    'ferry-hb 1 1870\r',
    'ferry-hb 2 1890\r',
    'ferry-writer start=101 slots=16384\r',
    'ferry-probe-ready\r',
    'ferry-ack 101\r',
    '[    2.345678] virtio_blk virtio1: [vda] 131072 512-byte logical blocks',
    'ferry-ack 102\r',
    'ferry-writer-error 103 EIO\r',
    'ferry-hb 3 1910\r\r',
    'ferry-ack 103[    3.0] kernel message landed mid-line\r',
    'ferry-ack 104\r',
    'ferry-ack 10', // cut short
  ].join('\n');
  const s = parseSerial(text);
  assert.deepEqual(s.heartbeats, [
    { seq: 1, guestMs: 1870 },
    { seq: 2, guestMs: 1890 },
    { seq: 3, guestMs: 1910 },
  ]);
  assert.deepEqual(s.acks, [101, 102, 104]);
  assert.equal(s.highestAck, 104);
  assert.equal(s.writerStart, 101);
  assert.equal(s.ready, true);

  const empty = parseSerial('SeaBIOS\r\nbooting\r\n');
  assert.deepEqual(empty, { heartbeats: [], acks: [], highestAck: null, writerStart: null, ready: false });
});

test('parseSerial: a piece cut short does not hide the probe line appended after it', () => {
  // A log that ended mid-line when the VM left, appended to when it came back.
  const s = parseSerial('ferry-hb 1 100\nferry-hb 35ferry-hb 90 5000\r\nferry-ack 7\n');
  assert.deepEqual(
    s.heartbeats.map((h) => h.seq),
    [1, 90],
  );
  assert.deepEqual(s.acks, [7]);
});

test('splitHeartbeats: a line cut by a switch-over is joined from both logs, nothing else is', () => {
  const source = 'ferry-hb 3555 100\r\nferry-hb 3556 120\r\nferry-hb 35';
  const dest = 'old boot\n57 140\r\nferry-hb 3558 160\r\n';
  assert.deepEqual(splitHeartbeats([source, dest], [3557]), [3557]);
  // Cut inside the word itself.
  assert.deepEqual(splitHeartbeats(['ferry-hb 8 1\nferr', 'y-hb 9 2\nferry-hb 10 3\n'], [9]), [9]);
  assert.deepEqual(splitHeartbeats(['ferry-hb 9 2', 'ferry-ack 3\n'], [9]), []);
  // Halves of another seq, halves in one log only, and nothing missing.
  assert.deepEqual(splitHeartbeats([source, dest], [3559]), []);
  assert.deepEqual(splitHeartbeats([source + '\n57 140\n'], [3557]), []);
  assert.deepEqual(splitHeartbeats([source, dest], []), []);
  // The halves must make the whole line: a tail with more than the guest's clock is not one.
  assert.deepEqual(splitHeartbeats([source, '57 140 extra\n'], [3557]), []);
  // Cut just before the line's end ("\r\n" or "\n"): the whole text in the source, an empty line
  // first in the destination (or after an older boot's lines); not the text after a last newline.
  const whole = 'ferry-hb 3556 120\r\nferry-hb 3557 140';
  assert.deepEqual(splitHeartbeats([whole + '\r', '\nferry-hb 3558 160\r\n'], [3557]), [3557]);
  assert.deepEqual(splitHeartbeats([whole, '\r\nferry-hb 3558 160\r\n'], [3557]), [3557]);
  assert.deepEqual(splitHeartbeats([whole, 'old boot\n\r\nferry-hb 3558 160\r\n'], [3557]), [3557]);
  assert.deepEqual(splitHeartbeats([whole, 'ferry-hb 3558 160\r\n'], [3557]), []);
  assert.deepEqual(splitHeartbeats([whole, whole + '\n'], [3557]), []);
});

test('heartbeatGaps', () => {
  assert.deepEqual(heartbeatGaps([]), { resets: 0, maxSeqGap: 0, maxGuestGapMs: 0 });
  const hbs = [
    { seq: 1, guestMs: 1000 },
    { seq: 2, guestMs: 1020 },
    { seq: 5, guestMs: 1085 },
    { seq: 6, guestMs: 1400 },
    { seq: 1, guestMs: 900 },
    { seq: 2, guestMs: 920 },
  ];
  assert.deepEqual(heartbeatGaps(hbs), { resets: 1, maxSeqGap: 2, maxGuestGapMs: 315 });
});

test('highestAckIn', () => {
  assert.equal(highestAckIn([]), null);
  assert.equal(highestAckIn(['nothing\n']), null);
  assert.equal(highestAckIn(['ferry-ack 5\r\nferry-ack 9\r\n', 'ferry-ack 7\n', 'ferry-ack 12']), 9);
});
