// One event stream per host (GET /api/hosts/HOST/v1/events through the console), shared by
// every page that listens: pages load once and load again only when an event says that
// something changed, so an idle page sends nothing. EventSource resumes with Last-Event-ID
// after a network error; a stream the console ends (logout, expired session) makes the app
// ask for the session once, which shows the login page on 401.
import { parseEvent, SSE_EVENT, type StreamEvent } from '../../src/api/events.js';

/** 'connection': the stream dropped or came back (the host's agent went away or returned). */
export type Listener = (host: string, e: StreamEvent | 'connection') => void;

interface Stream {
  source: EventSource | null;
  listeners: Set<Listener>;
  retry: ReturnType<typeof setTimeout> | undefined;
  dropped: boolean;
}

const streams = new Map<string, Stream>();
let ended: () => void = () => {};
/** Called when a stream was closed by the console (not a network error): the app checks the session. */
export function onStreamEnded(fn: () => void): void {
  ended = fn;
}

/** Wait before reopening a stream the console closed while the session still holds. */
const REOPEN_MS = 5000;

function open(host: string, s: Stream): void {
  const source = new EventSource(`/api/hosts/${encodeURIComponent(host)}/v1/events`);
  source.addEventListener(SSE_EVENT, (m) => {
    const e = parseEvent(String(m.data));
    if (e) for (const l of s.listeners) l(host, e);
  });
  const tell = (): void => {
    for (const l of s.listeners) l(host, 'connection');
  };
  source.onopen = () => {
    if (s.dropped) tell();
    s.dropped = false;
  };
  source.onerror = () => {
    if (!s.dropped) tell();
    s.dropped = true;
    if (source.readyState !== EventSource.CLOSED) return; // reconnecting by itself
    s.source = null;
    ended();
    if (s.listeners.size > 0)
      s.retry = setTimeout(() => {
        s.retry = undefined;
        open(host, s);
      }, REOPEN_MS);
  };
  s.source = source;
}

/** Listens to HOST's events until the returned function is called. */
export function listen(host: string, fn: Listener): () => void {
  let s = streams.get(host);
  if (!s) {
    s = { source: null, listeners: new Set(), retry: undefined, dropped: false };
    streams.set(host, s);
  }
  s.listeners.add(fn);
  if (!s.source && s.retry === undefined) open(host, s);
  const mine = s;
  return () => {
    mine.listeners.delete(fn);
    if (mine.listeners.size > 0) return;
    mine.source?.close();
    mine.source = null;
    clearTimeout(mine.retry);
    mine.retry = undefined;
    streams.delete(host);
  };
}

/** Closes every stream (logout). */
export function closeAll(): void {
  for (const s of streams.values()) {
    s.source?.close();
    clearTimeout(s.retry);
  }
  streams.clear();
}
