// What each cell of the fault matrix allows: the move's final states, and for a failed move
// what its record must name. Where the VM runs follows from the state (completed: on the
// destination, with the new disks for a storage move; failed or cancelled: on the source
// only, with its old disks), and every acknowledged record must be intact in every case.
// A state outside a cell's set fails the cell: a fault that should stop a move must not be
// papered over by the move completing anyway. `completed` is allowed only where the fault
// cannot stop the move by design, and the cell says why.
import type { Fault, Kind, Phase } from './harness.js';

export type Outcome = 'completed' | 'failed' | 'cancelled';

export interface Expectation {
  outcomes: readonly Outcome[];
  /** Why the fault cannot stop the move; set exactly when `completed` is allowed. */
  completes?: string;
  /** A failed move's error code (when the fault determines it). */
  code?: RegExp;
  /** What a failed move's message must name (checked when the code does not say it already). */
  message?: RegExp;
  /**
   * The migration network of the destination is cut before switch-over: the stream and NBD
   * traffic must not reach the destination on any other interface (checked with counters).
   */
  streamOnMigrationNetOnly?: boolean;
}

/** The allowed outcomes of one applicable cell. */
export function expected(_kind: Kind, phase: Phase, fault: Fault): Expectation {
  switch (fault) {
    case 'cancel':
      return phase === 'switching-over'
        ? {
            outcomes: ['completed'],
            completes:
              'a cancel is refused once the source is paused for the switch-over: undoing then ' +
              'would cost more downtime than finishing, so the move goes on',
          }
        : { outcomes: ['cancelled'] };
    case 'migration-net-cut':
      // Every phase here is before the switch-over completes (switching-over is held at
      // pre-switchover, the source paused): with the stream's only network gone the move
      // cannot finish, and must not find another way to the destination.
      return {
        outcomes: ['failed'],
        // A stall, (no stream yet) a connection the kernel gives up on, or (the destination's
        // listen after the cut) no address on the migration network: each names the network.
        code: /^(E_MIGRATION_STALLED|E_MIGRATION_NETWORK)$/,
        message: /no route to host|unreachable|timed out|migration link may be down/i,
        streamOnMigrationNetOnly: true,
      };
    case 'dest-disk-full':
      // Found while copying (ENOSPC), or already at Prepare by the pool's space check (E_DEST_SPACE).
      return { outcomes: ['failed'], message: /no space|not enough space|full|has \d+ MiB free/i };
    case 'source-agent-killed':
      // The restarted agent finds the move unfinished and rolls it back.
      return { outcomes: ['failed'], code: /^(E_AGENT_RESTARTED|E_RECOVERY)$/ };
    case 'dest-qemu-killed':
    case 'dest-agent-killed':
      // The destination holds nothing the VM could run on (no QEMU, or none its agent confirms).
      return { outcomes: ['failed'] };
  }
}

/** Why a record's end is not allowed by the cell, or null when it is. */
export function outcomeProblem(
  e: Expectation,
  end: { state: string; error: { code: string; message: string } | null },
): string | null {
  if (!(e.outcomes as readonly string[]).includes(end.state))
    return (
      `the move ended ${end.state}${end.error ? ` (${end.error.code}: ${end.error.message})` : ''}; ` +
      `this cell allows only ${e.outcomes.join(' or ')}`
    );
  if (end.state !== 'failed') return null;
  const err = end.error;
  if (!err?.code || err.message.length <= 20) return 'the failed record does not name its error';
  const codeOk = e.code ? e.code.test(err.code) : true;
  const messageOk = e.message ? e.message.test(err.message) : true;
  // With both set, either names the cause (the code, or a message saying it in words).
  if (e.code && e.message ? !(codeOk || messageOk) : !(codeOk && messageOk))
    return `the record's error does not name the fault: ${err.code}: ${err.message}`;
  return null;
}
