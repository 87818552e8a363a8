// The move as a state machine: every kind of move (live, shared-nothing, storage, offline)
// goes through these phases, and this table is the only place that says which phase may
// follow which, whether a user may cancel there, and what a failure there means.
// docs/moves.md describes it for people.
import type { MigrationState } from './schemas.js';

/** What happens when a step fails (or the move is cancelled) in a phase. */
export type OnFailure =
  /** Undo every step done so far, newest first: the VM is where it was, unchanged. */
  | 'undo'
  /**
   * Past the point of no return unless QEMU says otherwise: ask who runs the VM now
   * (the source's QEMU and the destination decide), finish or undo accordingly.
   */
  | 'resolve'
  /** Nothing to undo: the guest already runs on the destination (post-copy); report it. */
  | 'report';

export interface PhaseRule {
  next: readonly MigrationState[];
  /** May a user cancel the move in this phase? */
  cancel: boolean;
  onFailure: OnFailure;
}

export const PHASES: Record<MigrationState, PhaseRule> = {
  queued: { next: ['preparing', 'failed', 'cancelled'], cancel: true, onFailure: 'undo' },
  // Back to queued when the destination is at its own limit (it keeps the move waiting).
  preparing: {
    next: ['queued', 'copying-storage', 'copying-memory', 'switching-over', 'failed', 'cancelled'],
    cancel: true,
    onFailure: 'undo',
  },
  'copying-storage': {
    next: ['copying-memory', 'switching-over', 'failed', 'cancelled'],
    cancel: true,
    onFailure: 'undo',
  },
  'copying-memory': {
    next: ['post-copy', 'switching-over', 'failed', 'cancelled'],
    cancel: true,
    onFailure: 'undo',
  },
  // The guest runs on the destination while its pages arrive: no way back (QEMU's rule).
  'post-copy': { next: ['completed', 'failed'], cancel: false, onFailure: 'report' },
  // After the switch to post-copy (switchover step) a failure is reported, never undone.
  'switching-over': { next: ['post-copy', 'completed', 'failed'], cancel: false, onFailure: 'resolve' },
  completed: { next: [], cancel: false, onFailure: 'report' },
  failed: { next: [], cancel: false, onFailure: 'report' },
  cancelled: { next: [], cancel: false, onFailure: 'report' },
};

export function canTransition(from: MigrationState, to: MigrationState): boolean {
  return from === to || PHASES[from].next.includes(to);
}

export function isTerminal(s: MigrationState): boolean {
  return PHASES[s].next.length === 0;
}

export function isCancellable(s: MigrationState): boolean {
  return PHASES[s].cancel;
}
