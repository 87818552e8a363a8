// The engine's event stream: numbered events kept in a ring, so a client that reconnects
// with `since` misses nothing recent. The SSE route, the CLI's progress bars and the web
// console all render these same events.
import { EventEmitter } from 'node:events';

export interface FerryEvent {
  seq: number;
  at: string;
  type: string;
  vm?: string;
  [k: string]: unknown;
}

export class EventBus {
  private ring: FerryEvent[] = [];
  private seq = 0;
  private emitter = new EventEmitter();
  constructor(private readonly keep = 2000) {
    this.emitter.setMaxListeners(0);
  }

  emit(type: string, fields: Record<string, unknown> = {}): FerryEvent {
    const e: FerryEvent = { ...fields, seq: ++this.seq, at: new Date().toISOString(), type };
    this.ring.push(e);
    if (this.ring.length > this.keep) this.ring.splice(0, this.ring.length - this.keep);
    this.emitter.emit('event', e);
    return e;
  }

  since(seq: number): FerryEvent[] {
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
