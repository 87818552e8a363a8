// Renders migration records as they change: a bar with phase, %, rates, ETA and verdict on
// a terminal; plain lines otherwise (both on stderr, so stdout stays clean for --json).
import cliProgress from 'cli-progress';
import type { MigrationRecord } from '../migration/schemas.js';

const mibs = (bps: number): string => `${(bps / 1024 / 1024).toFixed(1)} MiB/s`;

export function describe(r: MigrationRecord): string {
  const parts = [
    `${r.state}${r.state === 'queued' && r.queuePosition ? ` #${r.queuePosition}` : ''}`,
    `${Math.floor(r.progress * 100)}%`,
  ];
  if (r.state === 'copying-memory' || r.state === 'copying-storage') {
    parts.push(
      `${mibs(r.rate.transferBps)}`,
      `dirty ${mibs(r.rate.dirtyBps)}`,
      `ETA ${r.etaSeconds === null ? '?' : `${Math.ceil(r.etaSeconds)}s`}`,
      r.verdict ?? '',
    );
    if (r.passes > 1) parts.push(`pass ${r.passes}`);
  }
  return parts.filter(Boolean).join('  ');
}

export class ProgressRenderer {
  private bar: cliProgress.SingleBar | null = null;
  private lastLine = '';
  private lastPlain = 0;
  private seenEvents = 0;
  constructor(private tty = Boolean(process.stderr.isTTY)) {}

  update(r: MigrationRecord): void {
    if (this.tty) {
      if (!this.bar) {
        this.bar = new cliProgress.SingleBar(
          {
            format: `${r.vm} → ${r.destination} |{bar}| {info}`,
            stream: process.stderr,
            hideCursor: true,
            barsize: 30,
          },
          cliProgress.Presets.shades_classic,
        );
        this.bar.start(100, 0, { info: '' });
      }
      this.bar.update(Math.floor(r.progress * 100), { info: describe(r) });
      return;
    }
    for (const e of r.events.slice(this.seenEvents)) process.stderr.write(`${e.at.slice(11, 19)} ${e.message}\n`);
    this.seenEvents = r.events.length;
    const line = describe(r);
    if (line !== this.lastLine && Date.now() - this.lastPlain > 2000) {
      process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);
      this.lastLine = line;
      this.lastPlain = Date.now();
    }
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}
