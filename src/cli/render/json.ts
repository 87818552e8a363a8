// --progress json: one JSON object per line on stderr (stdout keeps the one final document):
// {"at","type":"migration","id","vm","state","progress","etaSeconds","verdict",...,"log":[..]}
// when the record changes, {"at","type":"note","message"} for what the CLI itself says.
import type { RecordProgress } from '../record-progress.js';
import { newLogEntries } from './describe.js';
import type { MoveRenderer } from './types.js';

export class JsonRenderer implements MoveRenderer {
  private lastEntry: { at: string; message: string } | null = null;
  private last = '';

  constructor(private readonly out: NodeJS.WritableStream = process.stderr) {}

  record(r: RecordProgress): void {
    const log = newLogEntries(r, this.lastEntry).map((e) => e.message);
    this.lastEntry = r.events.at(-1) ?? this.lastEntry;
    const summary = JSON.stringify({
      id: r.id,
      vm: r.vm,
      kind: r.kind,
      source: r.source,
      destination: r.destination,
      state: r.state,
      queuePosition: r.queuePosition,
      progress: r.progress,
      etaSeconds: r.etaSeconds,
      verdict: r.verdict,
      passes: r.passes,
      bytesTransferred: r.bytesTransferred,
      remainingBytes: r.remainingBytes,
      transferBps: r.rate.transferBps,
      dirtyBps: r.rate.dirtyBps,
      downtimeMs: r.downtimeMs,
      pausedBytes: r.pausedBytes ?? null,
      error: r.error,
    });
    if (summary === this.last && !log.length) return;
    this.last = summary;
    this.out.write(
      `{"at":"${new Date().toISOString()}","type":"migration",${summary.slice(1, -1)},"log":${JSON.stringify(log)}}\n`,
    );
  }

  note(text: string): void {
    this.out.write(JSON.stringify({ at: new Date().toISOString(), type: 'note', message: text }) + '\n');
  }

  stop(): void {
    // Lines need no clean-up.
  }
}
