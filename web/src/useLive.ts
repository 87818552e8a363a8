// Loads data once, then again only when the hosts' event streams say something changed
// (ON_EVENT answers 'reload'), or applies an event to the data directly (it answers a
// function). No timers: an idle page sends no request. Loads never overlap; events that
// arrive during a load cause one more load after it; a failing load keeps the last good
// data and reports its error.
import { useCallback, useEffect, useRef, useState } from 'react';
import type { StreamEvent } from '../../src/api/events.js';
import { listen } from './events.js';

export interface Live<T> {
  data: T | undefined;
  error: Error | undefined;
  loading: boolean;
  /** Loads again now (after an action of this page). */
  refresh: () => void;
}

/** What an event (or 'connection': a host's stream dropped or came back) means for the data. */
export type OnEvent<T> = (host: string, e: StreamEvent | 'connection') => 'reload' | ((data: T) => T) | null;

/** Events arriving within this time cause one load. */
const COALESCE_MS = 250;

/**
 * KEY names what LOAD loads (a new key loads again); HOSTS are the hosts whose events
 * ON_EVENT sees (none: load once).
 */
export function useLive<T>(
  load: (signal: AbortSignal) => Promise<T>,
  key: string,
  hosts: readonly string[] = [],
  onEvent?: OnEvent<T>,
): Live<T> {
  const [state, setState] = useState<{ data: T | undefined; error: Error | undefined; loading: boolean }>({
    data: undefined,
    error: undefined,
    loading: true,
  });
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  const onEventRef = useRef(onEvent);
  useEffect(() => {
    loadRef.current = load;
    onEventRef.current = onEvent;
  });
  const hostKey = hosts.join('\n');

  useEffect(() => {
    const ac = new AbortController();
    let running = false;
    let again = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const schedule = (): void => {
      timer ??= setTimeout(() => {
        timer = undefined;
        void run();
      }, COALESCE_MS);
    };
    const run = async (): Promise<void> => {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        const data = await loadRef.current(ac.signal);
        if (!ac.signal.aborted) setState({ data, error: undefined, loading: false });
      } catch (err) {
        if (!ac.signal.aborted) setState((s) => ({ data: s.data, error: err as Error, loading: false }));
      }
      running = false;
      if (again && !ac.signal.aborted) {
        again = false;
        schedule();
      }
    };
    void run();
    const offs = (hostKey ? hostKey.split('\n') : []).map((h) =>
      listen(h, (host, e) => {
        const r = onEventRef.current?.(host, e) ?? null;
        if (r === 'reload') schedule();
        else if (r) setState((s) => (s.data === undefined ? s : { ...s, data: r(s.data) }));
      }),
    );
    return () => {
      ac.abort();
      clearTimeout(timer);
      for (const off of offs) off();
    };
  }, [key, hostKey, tick]);

  const refresh = useCallback(() => setTick((t) => t + 1), []);
  return { ...state, refresh };
}
