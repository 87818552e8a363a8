// One agent's event stream (`GET /v1/events`, server-sent events) as typed events: each
// `data:` the caller wants is checked with the caller's schema. A dropped connection is reopened from the last
// event id (the agent replays what it still holds); after a reconnect or a `reset` (the agent
// no longer holds what was missed) the caller reads the current state once. Never a polling loop.
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import type { AgentClient } from '../api/client.js';
import { FerryError } from '../errors.js';
import { parsePlain } from '../util/plain-text.js';

/** The agent pings every 15 s: a stream silent for longer than this is dead, reopen it. */
const IDLE_MS = 45_000;
/** How long the first connection may take before the stream is given up. */
const OPEN_TIMEOUT_MS = 15_000;
/** Waits between reconnects (the last one repeats). */
const BACKOFF_MS = [100, 250, 500, 1000, 2000, 5000];
/** An agent that cannot be reached again for this long is given up (the caller says so). */
const GIVE_UP_MS = 5 * 60_000;

export interface EventStreamHandlers<E> {
  /**
   * Which events the caller wants, judged on the raw JSON before it is checked against the
   * schema: a follower skips the rest unparsed (checking every event of a busy host cost the
   * CLI ~0.1 s of CPU per move).
   */
  wants?(raw: { type?: unknown; migration?: { id?: unknown } }): boolean;
  /**
   * A wanted event checked against what the caller reads of it (a schema): the event, or null
   * when it does not match (a newer agent's: a `migration` one makes the caller read the state).
   */
  check(raw: unknown): E | null;
  onEvent(e: E): void;
  /** Events may have been missed (a reconnect, or history lost): read the state once. */
  onGap(reason: string): void;
  /** The stream was open, then its agent stayed unreachable: it is closed. */
  onLost?(err: FerryError): void;
}

export interface EventStream {
  readonly host: string;
  /** Resolves once the agent has subscribed this stream (nothing published after it is missed). */
  readonly ready: Promise<void>;
  close(): void;
}

export interface EventStreamOptions {
  signal?: AbortSignal;
  idleMs?: number;
  openTimeoutMs?: number;
  giveUpMs?: number;
}

export function openEventStream<E>(
  client: AgentClient,
  handlers: EventStreamHandlers<E>,
  o: EventStreamOptions = {},
): EventStream {
  const ac = new AbortController();
  const closeOnAbort = (): void => {
    ac.abort();
  };
  o.signal?.addEventListener('abort', closeOnAbort, { once: true });
  // Changed from callbacks: kept in an object so that checks read their current values.
  const st: { lastSeq: number | null; opened: boolean } = { lastSeq: null, opened: false };
  const closed = (): boolean => ac.signal.aborted;
  let resolveReady: () => void = () => undefined;
  let rejectReady: (err: unknown) => void = () => undefined;
  const ready = new Promise<void>((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });
  // A caller that closes before awaiting `ready` must not leave a rejection unhandled.
  ready.catch(() => undefined);

  const onMessage = (m: EventSourceMessage): void => {
    if (m.event === 'reset') {
      handlers.onGap('the agent no longer holds the events this stream missed');
      return;
    }
    if (m.id !== undefined && /^\d+$/.test(m.id)) st.lastSeq = Number(m.id);
    if (m.event !== 'ferry') return;
    let raw: unknown;
    try {
      raw = parsePlain(m.data);
    } catch {
      return;
    }
    if (handlers.wants && !handlers.wants(raw ?? {})) return;
    const e = handlers.check(raw);
    if (e !== null) handlers.onEvent(e);
    // A newer agent's migration event this CLI cannot read: read the record instead.
    else if ((raw as { type?: unknown }).type === 'migration') handlers.onGap('an event did not match this version');
  };
  const parser = createParser({ onEvent: onMessage });

  /** One connection, until the agent ends it, it stays silent too long, or the stream closes. */
  const connectOnce = async (): Promise<boolean> => {
    const conn = new AbortController();
    const stop = (): void => {
      conn.abort();
    };
    ac.signal.addEventListener('abort', stop, { once: true });
    const openMs = o.openTimeoutMs ?? OPEN_TIMEOUT_MS;
    let timer = setTimeout(stop, openMs);
    const alive = (): void => {
      clearTimeout(timer);
      timer = setTimeout(stop, o.idleMs ?? IDLE_MS);
    };
    const thisOne = { open: false };
    parser.reset();
    try {
      await client.stream(
        `/v1/events${st.lastSeq === null ? '' : `?since=${st.lastSeq}`}`,
        (chunk) => {
          alive();
          parser.feed(chunk);
        },
        {
          signal: conn.signal,
          onOpen: () => {
            alive();
            thisOne.open = true;
            if (!st.opened) {
              st.opened = true;
              resolveReady();
            } else handlers.onGap('the event stream reconnected');
          },
        },
      );
      if (!thisOne.open && !closed())
        throw new FerryError(
          'E_AGENT_UNREACHABLE',
          `Cannot follow the events of host '${client.host}': no answer within ${openMs} ms; check its agent`,
          { context: { host: client.host } },
        );
    } finally {
      clearTimeout(timer);
      ac.signal.removeEventListener('abort', stop);
    }
    return thisOne.open;
  };

  const pause = (ms: number): Promise<void> =>
    new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(t);
        ac.signal.removeEventListener('abort', done);
        resolve();
      };
      const t = setTimeout(done, ms);
      ac.signal.addEventListener('abort', done, { once: true });
    });

  void (async () => {
    let failures = 0;
    let downSince = 0;
    while (!closed()) {
      try {
        failures = (await connectOnce()) ? 0 : failures + 1;
      } catch (err) {
        // The first connection decides: the caller learns why (and may go on without this host).
        if (!st.opened) {
          rejectReady(err);
          ac.abort();
          break;
        }
        failures++;
      }
      if (closed()) break;
      if (failures === 0) downSince = Date.now();
      else if (Date.now() - downSince > (o.giveUpMs ?? GIVE_UP_MS)) {
        ac.abort();
        handlers.onLost?.(
          new FerryError(
            'E_AGENT_UNREACHABLE',
            `Cannot follow the events of host '${client.host}': its agent has not answered for ` +
              `${Math.round((Date.now() - downSince) / 1000)} s; check it, then follow again`,
            { context: { host: client.host } },
          ),
        );
        break;
      }
      await pause(BACKOFF_MS[Math.min(failures, BACKOFF_MS.length - 1)] ?? 5000);
    }
    o.signal?.removeEventListener('abort', closeOnAbort);
  })();

  return {
    host: client.host,
    ready,
    close: () => {
      ac.abort();
      if (!st.opened) rejectReady(new Error('closed'));
    },
  };
}
