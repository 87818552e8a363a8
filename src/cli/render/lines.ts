// Plain lines on stderr (not a terminal, or --progress lines): each entry of the record's log
// as it appears, and the progress line when the phase changes or at most every 2 s.
import type { RecordProgress } from '../record-progress.js';
import { clock, describe, newLogEntries } from './describe.js';
import type { MoveRenderer } from './types.js';

const EVERY_MS = 2000;

export class LinesRenderer implements MoveRenderer {
  private lastEntry: { at: string; message: string } | null = null;
  private lastLine = '';
  private lastState = '';
  private lastAt = 0;

  constructor(private readonly out: NodeJS.WritableStream = process.stderr) {}

  record(r: RecordProgress): void {
    for (const e of newLogEntries(r, this.lastEntry)) this.out.write(`${clock(e.at)} ${e.message}\n`);
    this.lastEntry = r.events.at(-1) ?? this.lastEntry;
    const line = describe(r);
    const now = Date.now();
    if (line !== this.lastLine && (r.state !== this.lastState || now - this.lastAt >= EVERY_MS)) {
      this.out.write(`${clock(new Date(now).toISOString())} ${line}\n`);
      this.lastLine = line;
      this.lastState = r.state;
      this.lastAt = now;
    }
  }

  note(text: string): void {
    this.out.write(`${clock(new Date().toISOString())} ${text}\n`);
  }

  stop(): void {
    // Lines need no clean-up.
  }
}
