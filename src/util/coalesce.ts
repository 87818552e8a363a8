// One run at a time of an idempotent refresh: a call while it runs asks for one more run
// after it and resolves with it, so a burst of watch events costs one or two reads.

export function coalesced(fn: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | null = null;
  // Calls so far; a run that ends with more calls than it started with runs once more. A
  // counter rather than an "again" flag, which TypeScript would narrow to false inside the loop.
  let calls = 0;
  return () => {
    calls++;
    if (running) return running;
    running = (async () => {
      try {
        let served: number;
        do {
          served = calls;
          await fn();
        } while (served !== calls);
      } finally {
        running = null;
      }
    })();
    return running;
  };
}
