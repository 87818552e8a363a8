// The engine's event stream: numbered events kept in a ring, so a client that reconnects
// with its last id misses nothing recent. The SSE route, the CLI's progress bars and the web
// console all render these same events (pnpm's "events in, renderers out").
import { EventEmitter } from 'node:events';
import type { EventFields, EventType, FerryEvent } from '../api/events.js';

export class EventBus {
  private ring: FerryEvent[] = [];
  private seq = 0;
  private emitter = new EventEmitter();
  constructor(private readonly keep = 2000) {
    this.emitter.setMaxListeners(0);
  }

  emit<T extends EventType>(type: T, fields: EventFields<T>): FerryEvent {
    const e = { ...fields, type, seq: ++this.seq, at: new Date().toISOString() } as unknown as FerryEvent;
    this.ring.push(e);
    if (this.ring.length > this.keep) this.ring.splice(0, this.ring.length - this.keep);
    this.emitter.emit('event', e);
    return e;
  }

  /** Events after `seq`, or null when some of them already left the ring (the reader must re-read state). */
  since(seq: number): FerryEvent[] | null {
    const first = this.ring[0];
    if (first && seq < first.seq - 1) return null;
    return this.ring.filter((e) => e.seq > seq);
  }

  get lastSeq(): number {
    return this.seq;
  }

  subscribe(fn: (e: FerryEvent) => void): () => void {
    this.emitter.on('event', fn);
    return () => this.emitter.off('event', fn);
  }
}
