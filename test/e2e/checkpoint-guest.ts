// What the checkpoint e2e tests read from the probe guest's serial log: heartbeats and acks
// past a point, and the part a guest restored from a checkpoint printed.
import fsp from 'node:fs/promises';
import { parseSerial } from '../../guest/records.js';
import { sleep } from '../../src/util/exec.js';

/** Waits until the serial log past `from` holds `n` heartbeats and acks; returns that part. */
export async function waitMore(file: string, from: number, n: number, timeoutMs = 60_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const text = (await fsp.readFile(file, 'utf8')).slice(from);
    const s = parseSerial(text);
    if (s.heartbeats.length >= n && s.acks.length >= n) return text;
    if (Date.now() > until) throw new Error(`fewer than ${n} heartbeats and acks in ${timeoutMs} ms:\n${text}`);
    await sleep(200);
  }
}

/**
 * The part of a serial log written by a guest restored from a checkpoint: from the first probe
 * line whose heartbeat or ack sequence goes back (before it, the guest that was replaced printed on).
 */
export function restoredPart(text: string): string {
  const lines = text.split('\n');
  const last = { hb: -1, ack: -1 };
  for (const [i, line] of lines.entries()) {
    const m = /ferry-(hb|ack) (\d+)/.exec(line);
    if (!m) continue;
    const kind = m[1] === 'hb' ? 'hb' : 'ack';
    const seq = Number(m[2]);
    if (seq < last[kind]) return lines.slice(i).join('\n');
    last[kind] = seq;
  }
  return '';
}

export const logSize = async (f: string): Promise<number> => (await fsp.stat(f)).size;
export const lastHb = (text: string): number => parseSerial(text).heartbeats.at(-1)?.seq ?? 0;
