// Ctrl-C while a command follows something: each press is counted instead of ending the
// process, so the command decides what it means (cancel the move, then stop waiting).
/** What a follower needs of Ctrl-C: presses so far, and the later ones as they come. */
export interface InterruptSource {
  readonly presses: number;
  listen(fn: (presses: number) => void): () => void;
}

export class Interrupts implements InterruptSource {
  private count = 0;
  private readonly listeners = new Set<(presses: number) => void>();
  private readonly onSignal = (): void => {
    this.count++;
    for (const l of this.listeners) l(this.count);
  };

  constructor() {
    process.on('SIGINT', this.onSignal);
  }

  /** How many times Ctrl-C was pressed so far. */
  get presses(): number {
    return this.count;
  }

  /** Calls `fn` at every later press; returns how to stop. */
  listen(fn: (presses: number) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Ctrl-C ends the process again. */
  dispose(): void {
    process.off('SIGINT', this.onSignal);
    this.listeners.clear();
  }
}
