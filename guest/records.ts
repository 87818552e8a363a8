// The probe guest's disk record log and serial protocol (see guest/probe/workload.c).
//
// The guest writes 4096-byte records into a circular log at the start of its data disk:
// N = min(disk size, 64 MiB) / 4096 slots, record SEQ (from 1) at byte (SEQ % N) * 4096.
// Little endian: "FERRYREC", u64 seq, u32 N, u32 0, 1017 u32 xorshift32 words, u32 CRC-32
// (zlib) of bytes 0..4091. A record is acknowledged on the serial console (`ferry-ack SEQ`)
// only once it is on the disk, so after any crash or migration every acknowledged record
// must still be there; records above the highest ack may be missing or torn.
import { crc32 } from 'node:zlib';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertImage, type ImageFormat } from '../src/qemu/img.js';

export const RECORD_SIZE = 4096;
export const MAX_LOG_BYTES = 64 * 1024 * 1024;

const MAGIC = Buffer.from('FERRYREC', 'latin1');
const PAYLOAD_OFFSET = 24;
const PAYLOAD_WORDS = 1017;
const CRC_OFFSET = 4092;
const TWO32 = 2 ** 32;
const LIST_CAP = 1000;
const NAMED_CAP = 20;

function seed(seq: number): number {
  const lo = seq % TWO32;
  const hi = Math.floor(seq / TWO32);
  const x = (lo ^ hi ^ 0x9e3779b9) >>> 0;
  return x === 0 ? 1 : x;
}

function writePayload(b: Buffer, seq: number): void {
  let x = seed(seq);
  for (let i = 0; i < PAYLOAD_WORDS; i++) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    b.writeUInt32LE(x, PAYLOAD_OFFSET + 4 * i);
  }
}

function payloadOk(b: Buffer, seq: number): boolean {
  let x = seed(seq);
  for (let i = 0; i < PAYLOAD_WORDS; i++) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    if (b.readUInt32LE(PAYLOAD_OFFSET + 4 * i) !== x) return false;
  }
  return true;
}

/** Record `seq` of a log with `nslots` slots, byte for byte as the guest writes it. */
export function makeRecord(seq: number, nslots: number): Buffer {
  if (!Number.isSafeInteger(seq) || seq < 1) throw new RangeError(`record seq must be a positive integer, not ${seq}`);
  if (!Number.isInteger(nslots) || nslots < 1 || nslots >= TWO32)
    throw new RangeError(`nslots must be a positive u32, not ${nslots}`);
  const b = Buffer.alloc(RECORD_SIZE);
  MAGIC.copy(b, 0);
  b.writeBigUInt64LE(BigInt(seq), 8);
  b.writeUInt32LE(nslots, 16);
  b.writeUInt32LE(0, 20);
  writePayload(b, seq);
  b.writeUInt32LE(crc32(b.subarray(0, CRC_OFFSET)), CRC_OFFSET);
  return b;
}

function hasMagic(block: Buffer): boolean {
  return block.length >= MAGIC.length && block.compare(MAGIC, 0, MAGIC.length, 0, MAGIC.length) === 0;
}

function crcOk(block: Buffer): boolean {
  return crc32(block.subarray(0, CRC_OFFSET)) === block.readUInt32LE(CRC_OFFSET);
}

function readSeq(block: Buffer): number | null {
  const s = block.readBigUInt64LE(8);
  return s >= 1n && s <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(s) : null;
}

type Check = { kind: 'ok'; seq: number; nslots: number } | { kind: 'missing' } | { kind: 'corrupt'; why: string };

/** Classifies the block in `slot` (optionally: of a log of `nslots`, expected to hold `want`). */
function check(block: Buffer | undefined, slot: number, nslots?: number, want?: number): Check {
  if (!block || block.length < RECORD_SIZE || !hasMagic(block)) return { kind: 'missing' };
  if (!crcOk(block)) return { kind: 'corrupt', why: 'bad CRC' };
  const seq = readSeq(block);
  const n = block.readUInt32LE(16);
  if (seq === null) return { kind: 'corrupt', why: `bad seq ${block.readBigUInt64LE(8)}` };
  if (block.readUInt32LE(20) !== 0) return { kind: 'corrupt', why: 'reserved field not zero' };
  if (n === 0 || (nslots !== undefined && n !== nslots)) return { kind: 'corrupt', why: `written for ${n} slots` };
  if (seq % n !== slot) return { kind: 'corrupt', why: `holds record ${seq}, which belongs in slot ${seq % n}` };
  if (want !== undefined && seq !== want) return { kind: 'corrupt', why: `holds record ${seq}` };
  if (!payloadOk(block, seq)) return { kind: 'corrupt', why: 'bad payload' };
  return { kind: 'ok', seq, nslots: n };
}

/** The record in `block` if it is a valid record for `slot` (and for a log of `nslots`, when given). */
export function parseRecord(block: Buffer, slot: number, nslots?: number): { seq: number; nslots: number } | null {
  const c = check(block, slot, nslots);
  return c.kind === 'ok' ? { seq: c.seq, nslots: c.nslots } : null;
}

export interface RecordReport {
  /** Slots in the log, from the valid records (0 if there are none). */
  nslots: number;
  /** Highest valid record on the disk (0 if none). */
  highestSeq: number;
  /** Oldest record the log can still hold: max(1, highestSeq - nslots + 1). */
  lowestExpected: number;
  /** Highest s with every record in [lowestExpected, s] valid. */
  highestContiguous: number;
  /** Records in the expected range whose slot holds no record (capped at 1000). */
  missing: number[];
  /** Records in the expected range whose slot holds a damaged or wrong record (capped at 1000). */
  corrupt: number[];
  highestAck: number | null;
  /** Every acknowledged record is on the disk. */
  ok: boolean;
  problems: string[];
}

/** Checks a raw copy of the start of the disk (at most 64 MiB are looked at). */
export function verifyLog(raw: Buffer, opts: { highestAck?: number } = {}): RecordReport {
  const highestAck = opts.highestAck ?? null;
  const nblocks = Math.floor(Math.min(raw.length, MAX_LOG_BYTES) / RECORD_SIZE);
  const block = (slot: number): Buffer | undefined =>
    slot < nblocks ? raw.subarray(slot * RECORD_SIZE, (slot + 1) * RECORD_SIZE) : undefined;
  const problems: string[] = [];

  // nslots: what the valid records say (the most common value if they disagree).
  const votes = new Map<number, number>();
  for (let i = 0; i < nblocks; i++) {
    const c = check(block(i), i);
    if (c.kind === 'ok') votes.set(c.nslots, (votes.get(c.nslots) ?? 0) + 1);
  }
  let nslots = 0;
  let best = 0;
  for (const [n, count] of votes)
    if (count > best || (count === best && n > nslots)) {
      nslots = n;
      best = count;
    }
  if (votes.size > 1) {
    const all = [...votes].map(([n, c]) => `${c} record(s) for ${n} slots`).join(', ');
    problems.push(`records disagree on the log size: ${all}; using ${nslots} slots`);
  }

  let highestSeq = 0;
  if (nslots > 0) {
    for (let i = 0; i < Math.min(nblocks, nslots); i++) {
      const c = check(block(i), i, nslots);
      if (c.kind === 'ok' && c.seq > highestSeq) highestSeq = c.seq;
    }
  }
  const lowestExpected = Math.max(1, highestSeq - nslots + 1);
  let highestContiguous = lowestExpected - 1;
  let contiguous = true;
  const missing: number[] = [];
  const corrupt: number[] = [];
  let missingTotal = 0;
  let corruptTotal = 0;
  const ackBad: string[] = [];
  let ackBadTotal = 0;
  for (let s = lowestExpected; s <= highestSeq; s++) {
    const c = check(block(s % nslots), s % nslots, nslots, s);
    if (c.kind === 'ok') {
      if (contiguous) highestContiguous = s;
      continue;
    }
    contiguous = false;
    if (c.kind === 'missing') {
      missingTotal++;
      if (missing.length < LIST_CAP) missing.push(s);
    } else {
      corruptTotal++;
      if (corrupt.length < LIST_CAP) corrupt.push(s);
    }
    if (highestAck !== null && s <= highestAck) {
      ackBadTotal++;
      if (ackBad.length < NAMED_CAP) {
        ackBad.push(
          c.kind === 'missing'
            ? `record ${s} acknowledged but missing from the disk`
            : `record ${s} acknowledged but corrupt on the disk (${c.why})`,
        );
      }
    }
  }
  problems.push(...ackBad);
  if (ackBadTotal > ackBad.length)
    problems.push(`... and ${ackBadTotal - ackBad.length} more acknowledged records missing or corrupt`);
  if (missingTotal > missing.length)
    problems.push(`missing list truncated: ${missingTotal} records missing, first ${LIST_CAP} listed`);
  if (corruptTotal > corrupt.length)
    problems.push(`corrupt list truncated: ${corruptTotal} records corrupt, first ${LIST_CAP} listed`);
  if (highestAck !== null && highestAck > highestSeq) {
    problems.push(
      highestSeq === 0
        ? `record ${highestAck} acknowledged but the disk holds no valid records`
        : `record ${highestAck} acknowledged but the highest record on the disk is ${highestSeq}`,
    );
  }
  const ok = highestAck === null || highestAck <= highestContiguous;
  return { nslots, highestSeq, lowestExpected, highestContiguous, missing, corrupt, highestAck, ok, problems };
}

export interface VerifyDiskOptions {
  format?: ImageFormat;
  highestAck?: number;
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** Converts a disk image to a temporary raw file and checks its record log. Works on images a running QEMU holds. */
export async function verifyDiskImage(path: string, opts: VerifyDiskOptions = {}): Promise<RecordReport> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-verify-'));
  try {
    const tmp = join(dir, 'disk.raw');
    await convertImage(path, tmp, {
      dstFormat: 'raw',
      forceShare: true,
      ...(opts.format ? { srcFormat: opts.format } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    });
    const fh = await open(tmp, 'r');
    let raw: Buffer;
    try {
      const size = Math.min((await fh.stat()).size, MAX_LOG_BYTES);
      raw = Buffer.alloc(size);
      let off = 0;
      while (off < size) {
        const { bytesRead } = await fh.read(raw, off, size - off, off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      raw = raw.subarray(0, off);
    } finally {
      await fh.close();
    }
    return verifyLog(raw, opts.highestAck !== undefined ? { highestAck: opts.highestAck } : {});
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface Heartbeat {
  seq: number;
  guestMs: number;
}

export interface SerialSummary {
  heartbeats: Heartbeat[];
  acks: number[];
  highestAck: number | null;
  /** `start=` of the last `ferry-writer` line. */
  writerStart: number | null;
  ready: boolean;
}

const HB_RE = /^ferry-hb (\d+) (\d+)$/;
const ACK_RE = /^ferry-ack (\d+)$/;
const START_RE = /^ferry-writer start=(\d+) slots=\d+$/;

/** A line's text before its first `ferry-`, and each piece from one `ferry-` to the next or the line's end. */
function pieces(rawLine: string): { before: string; probe: string[] } {
  const line = rawLine.replace(/\r/g, '');
  const [before = '', ...rest] = line.split('ferry-');
  return { before, probe: rest.map((p) => 'ferry-' + p.trimEnd()) };
}

/**
 * Reads the probe's lines from a serial log. Other lines (kernel messages) are ignored, a
 * probe line may follow other text on its line, and an unterminated last line is dropped
 * (it may be cut short). A piece cut short and followed by another probe line on the same
 * line (a log that ended mid-line and was appended to later) does not hide that line.
 */
export function parseSerial(text: string): SerialSummary {
  const lines = text.split('\n');
  lines.pop(); // the text after the last newline: empty or incomplete
  const heartbeats: Heartbeat[] = [];
  const acks: number[] = [];
  let highestAck: number | null = null;
  let writerStart: number | null = null;
  let ready = false;
  for (const rawLine of lines) {
    for (const line of pieces(rawLine).probe) {
      let m: RegExpExecArray | null;
      if ((m = HB_RE.exec(line))) {
        heartbeats.push({ seq: Number(m[1]), guestMs: Number(m[2]) });
      } else if ((m = ACK_RE.exec(line))) {
        const a = Number(m[1]);
        acks.push(a);
        if (highestAck === null || a > highestAck) highestAck = a;
      } else if ((m = START_RE.exec(line))) {
        writerStart = Number(m[1]);
      } else if (line === 'ferry-probe-ready') {
        ready = true;
      }
    }
  }
  return { heartbeats, acks, highestAck, writerStart, ready };
}

/**
 * The heartbeats among `seqs` whose line was cut in two by a switch-over: the UART moves with
 * the VM, so a line being printed when the source stopped begins in the source's console log
 * and ends in the destination's, unparseable in each. One log's unfinished piece and another's
 * unfinished start must join into exactly `ferry-hb SEQ MS` for the seq to count as printed.
 */
export function splitHeartbeats(texts: readonly string[], seqs: readonly number[]): number[] {
  if (!seqs.length) return [];
  // Heads: what a log printed last before a switch-over (its unterminated end, or a piece that
  // runs into the next probe line). Tails: what a log printed first after one (a line's text
  // before any probe piece). A head can be any text, even one without `ferry-` ("fer"). A cut
  // just before the line's end leaves the whole text as the head and an empty line as the tail
  // (the probe prints no empty line of its own); the text after a log's last newline is not a line.
  const heads: { log: number; text: string }[] = [];
  const tails: { log: number; text: string }[] = [];
  texts.forEach((text, log) => {
    const lines = text.split('\n');
    lines.forEach((rawLine, i) => {
      const { before, probe } = pieces(rawLine);
      if (before || (probe.length === 0 && i < lines.length - 1)) tails.push({ log, text: before });
      heads.push({ log, text: before }, ...probe.map((p) => ({ log, text: p })));
    });
  });
  const found: number[] = [];
  for (const seq of seqs) {
    const want = `ferry-hb ${seq} `;
    const joined = heads.some(
      (h) =>
        h.text &&
        (want.startsWith(h.text) || h.text.startsWith(want)) &&
        tails.some((t) => t.log !== h.log && HB_RE.exec((h.text + t.text).trimEnd())?.[1] === String(seq)),
    );
    if (joined) found.push(seq);
  }
  return found;
}

/**
 * Gaps in a heartbeat series. resets: times the seq went down (the guest restarted);
 * maxSeqGap: largest seq jump minus 1 (lost lines); maxGuestGapMs: largest guest-clock step
 * between consecutive heartbeats (not across a reset).
 */
export function heartbeatGaps(hbs: readonly Heartbeat[]): { resets: number; maxSeqGap: number; maxGuestGapMs: number } {
  let resets = 0;
  let maxSeqGap = 0;
  let maxGuestGapMs = 0;
  let a: Heartbeat | undefined; // the one before b
  for (const b of hbs) {
    if (a) {
      if (b.seq < a.seq) resets++;
      else {
        maxSeqGap = Math.max(maxSeqGap, b.seq - a.seq - 1);
        maxGuestGapMs = Math.max(maxGuestGapMs, b.guestMs - a.guestMs);
      }
    }
    a = b;
  }
  return { resets, maxSeqGap, maxGuestGapMs };
}

/** The highest `ferry-ack` over several serial logs (e.g. source and destination of a migration). */
export function highestAckIn(texts: readonly string[]): number | null {
  let h: number | null = null;
  for (const t of texts) {
    const a = parseSerial(t).highestAck;
    if (a !== null && (h === null || a > h)) h = a;
  }
  return h;
}
