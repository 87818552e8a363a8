// A progress bar on a terminal (stderr): phase, %, rates, ETA and verdict, redrawn in place;
// notes are printed above it.
import cliProgress from 'cli-progress';
import type { RecordProgress } from '../record-progress.js';
import { describe } from './describe.js';
import type { MoveRenderer } from './types.js';

/** Signals that end the process while a bar hides the cursor (Ctrl-C is the follower's). */
const FATAL: NodeJS.Signals[] = ['SIGTERM', 'SIGHUP'];

export class BarRenderer implements MoveRenderer {
  private bar: cliProgress.SingleBar | null = null;
  private last: RecordProgress | null = null;
  /** Shows the cursor again, then dies of the signal as it would have without us. */
  private readonly onFatal = (sig: NodeJS.Signals): void => {
    this.stop();
    process.kill(process.pid, sig);
  };

  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {}

  record(r: RecordProgress): void {
    this.last = r;
    if (!this.bar) {
      this.bar = new cliProgress.SingleBar(
        {
          format: `${r.vm} → ${r.destination} |{bar}| {info}`,
          stream: this.out,
          hideCursor: true,
          clearOnComplete: true,
          barsize: 30,
          // Redraws only show what a record brought; a few a second is plenty.
          fps: 4,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(100, 0, { info: '' });
      for (const sig of FATAL) process.once(sig, this.onFatal);
    }
    this.bar.update(Math.floor(r.progress * 100), { info: describe(r) });
  }

  /** Clears the bar, prints the note, and draws the bar again below it. */
  note(text: string): void {
    this.clear();
    this.out.write(`${text}\n`);
    if (this.last) this.record(this.last);
  }

  /** Replaces the bar with one line saying where the move ended up (the record follows on stdout). */
  stop(): void {
    if (!this.clear()) return;
    if (this.last) this.out.write(`${this.last.vm} → ${this.last.destination}: ${describe(this.last)}\n`);
  }

  /** Removes the bar (the cursor shows again); false when none was drawn. */
  private clear(): boolean {
    if (!this.bar) return false;
    for (const sig of FATAL) process.off(sig, this.onFatal);
    this.bar.stop();
    this.bar = null;
    return true;
  }
}
