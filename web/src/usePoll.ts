// Loads data now and again every intervalMs (0: once) until the component goes away.
// Runs never overlap; a failing run keeps the last good data and reports its error.
import { useCallback, useEffect, useRef, useState, type DependencyList } from 'react';

export interface Poll<T> {
  data: T | undefined;
  error: Error | undefined;
  loading: boolean;
  refresh: () => void;
}

export function usePoll<T>(fn: (signal: AbortSignal) => Promise<T>, intervalMs: number, deps: DependencyList): Poll<T> {
  const [state, setState] = useState<{ data: T | undefined; error: Error | undefined; loading: boolean }>({
    data: undefined,
    error: undefined,
    loading: true,
  });
  const [tick, setTick] = useState(0);
  const fnRef = useRef(fn);
  fnRef.current = fn;

  useEffect(() => {
    const ac = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async (): Promise<void> => {
      try {
        const data = await fnRef.current(ac.signal);
        if (!ac.signal.aborted) setState({ data, error: undefined, loading: false });
      } catch (err) {
        if (!ac.signal.aborted) setState((s) => ({ data: s.data, error: err as Error, loading: false }));
      }
      if (!ac.signal.aborted && intervalMs > 0) timer = setTimeout(() => void run(), intervalMs);
    };
    setState((s) => ({ ...s, loading: true }));
    void run();
    return () => {
      ac.abort();
      clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick, intervalMs]);

  const refresh = useCallback(() => setTick((t) => t + 1), []);
  return { ...state, refresh };
}
