// The per-VM phase gate: every operation on a VM passes through it. Each VM is in one phase
// (idle, an operation running, or held by a move); one table says, for each phase, whether
// an operation may run now, must wait its turn, or is refused with E_VM_BUSY. Operations on
// one VM run one at a time, in the order they came; different VMs never wait for each other.
// Self-fencing is not an operation: it kills QEMU at once whatever the phase (the lease is
// about to expire, nothing may delay it).
import { FerryError } from '../errors.js';

export const VM_OPS = [
  'create',
  'start',
  'stop',
  'pause',
  'resume',
  'remove',
  'configure',
  'ha-start',
  'checkpoint',
  'move',
] as const;
/**
 * What may be asked of a VM. `configure`: cluster add-vm/remove-vm; `checkpoint`: take, apply or
 * remove a checkpoint; `move`: a migration takes the VM.
 */
export type VmOp = (typeof VM_OPS)[number];

/** Operations that run to completion under the gate (a move holds it instead, until released). */
export type GatedOp = Exclude<VmOp, 'move'>;

const OP_PHASES = {
  create: 'creating',
  start: 'starting',
  stop: 'stopping',
  pause: 'pausing',
  resume: 'resuming',
  remove: 'removing',
  configure: 'configuring',
  'ha-start': 'starting',
  checkpoint: 'checkpointing',
} as const satisfies Record<GatedOp, string>;

export type PhaseKind = 'idle' | (typeof OP_PHASES)[GatedOp] | 'migrating';
/** A VM's phase: `migrating:<job id>` while a move holds it. */
export type VmPhase = Exclude<PhaseKind, 'migrating'> | `migrating:${string}`;

/** run: now · wait: after the operations before it · refuse: E_VM_BUSY. */
export type Rule = 'run' | 'wait' | 'refuse';

const busyRow = (): Record<VmOp, Rule> => ({
  create: 'wait',
  start: 'wait',
  stop: 'wait',
  pause: 'wait',
  resume: 'wait',
  remove: 'wait',
  configure: 'wait',
  'ha-start': 'wait',
  checkpoint: 'wait',
  // A move takes the VM at once or not at all: it never waits behind a start or a stop.
  move: 'refuse',
});

/** Which operation may run in which phase. */
export const GATE_RULES: Record<PhaseKind, Record<VmOp, Rule>> = {
  idle: {
    create: 'run',
    start: 'run',
    stop: 'run',
    pause: 'run',
    resume: 'run',
    remove: 'run',
    configure: 'run',
    'ha-start': 'run',
    checkpoint: 'run',
    move: 'run',
  },
  creating: busyRow(),
  starting: busyRow(),
  stopping: busyRow(),
  pausing: busyRow(),
  resuming: busyRow(),
  removing: busyRow(),
  configuring: busyRow(),
  checkpointing: busyRow(),
  // A move holds the VM: everything else is refused until it releases it.
  migrating: {
    create: 'refuse',
    start: 'refuse',
    stop: 'refuse',
    pause: 'refuse',
    resume: 'refuse',
    remove: 'refuse',
    configure: 'refuse',
    'ha-start': 'refuse',
    checkpoint: 'refuse',
    move: 'refuse',
  },
};

export function phaseKind(phase: VmPhase): PhaseKind {
  return phase.startsWith('migrating:') ? 'migrating' : (phase as PhaseKind);
}

export function ruleFor(phase: VmPhase, op: VmOp): Rule {
  return GATE_RULES[phaseKind(phase)][op];
}

/** The job holding a VM in phase `migrating:<job>`, else null. */
export function jobOf(phase: VmPhase): string | null {
  return phase.startsWith('migrating:') ? phase.slice('migrating:'.length) : null;
}

export function busyError(vm: string, op: VmOp, phase: VmPhase): FerryError {
  const job = jobOf(phase);
  if (job !== null)
    return new FerryError(
      'E_VM_BUSY',
      `Cannot change VM '${vm}' now: it is migrating (migration ${job}); ` +
        `wait for it or cancel it with 'ferry migration cancel ${job}'`,
      { context: { vm, migration: job } },
    );
  return new FerryError(
    'E_VM_BUSY',
    `Cannot ${op === 'move' ? 'move' : op} VM '${vm}' now: it is ${phase}; wait for that to finish and retry`,
    { context: { vm, phase } },
  );
}

interface GateState {
  phase: VmPhase;
  /** The end of the line of operations on this VM (never rejects). */
  tail: Promise<void>;
  /** Operations in line, the running one included. */
  queued: number;
}

export class VmGate {
  private vms = new Map<string, GateState>();

  phase(vm: string): VmPhase {
    return this.vms.get(vm)?.phase ?? 'idle';
  }

  /** The move holding the VM, if one does. */
  movingJob(vm: string): string | null {
    return jobOf(this.phase(vm));
  }

  private state(vm: string): GateState {
    let s = this.vms.get(vm);
    if (!s) {
      s = { phase: 'idle', tail: Promise.resolve(), queued: 0 };
      this.vms.set(vm, s);
    }
    return s;
  }

  private forgetIfIdle(vm: string, s: GateState): void {
    if (s.phase === 'idle' && s.queued === 0 && this.vms.get(vm) === s) this.vms.delete(vm);
  }

  /**
   * Runs `fn` as operation `op` on the VM: at once when the table says run, after the
   * operations already in line when it says wait; E_VM_BUSY when it says refuse. The rule is
   * asked again when the operation's turn comes (a move may have taken the VM meanwhile).
   */
  async run<T>(vm: string, op: GatedOp, fn: () => Promise<T>): Promise<T> {
    const s = this.state(vm);
    if (ruleFor(s.phase, op) === 'refuse') {
      this.forgetIfIdle(vm, s);
      throw busyError(vm, op, s.phase);
    }
    s.queued++;
    const turn = s.tail;
    let done = (): void => undefined;
    s.tail = new Promise<void>((resolve) => {
      done = resolve;
    });
    try {
      await turn;
      // Only idle or migrating here: the operations before this one have all ended.
      if (ruleFor(s.phase, op) !== 'run') throw busyError(vm, op, s.phase);
      s.phase = OP_PHASES[op];
      try {
        return await fn();
      } finally {
        s.phase = 'idle';
      }
    } finally {
      s.queued--;
      done();
      this.forgetIfIdle(vm, s);
    }
  }

  /** A move takes the VM (phase `migrating:<job>`): every other operation is refused until `release`. */
  hold(vm: string, jobId: string): void {
    const s = this.state(vm);
    if (ruleFor(s.phase, 'move') !== 'run') {
      this.forgetIfIdle(vm, s);
      throw busyError(vm, 'move', s.phase);
    }
    s.phase = `migrating:${jobId}`;
  }

  /**
   * The VM left this host (its move switched over): the move's hold ends now, so a VM of the
   * same name may arrive (e.g. moved straight back) before the move has finished its books.
   */
  vacate(vm: string): void {
    const s = this.vms.get(vm);
    if (s && jobOf(s.phase) !== null) {
      s.phase = 'idle';
      this.forgetIfIdle(vm, s);
    }
  }

  /** The move is over: the VM is idle again (no-op unless `jobId` holds it). */
  release(vm: string, jobId: string): void {
    const s = this.vms.get(vm);
    if (s?.phase !== `migrating:${jobId}`) return;
    s.phase = 'idle';
    this.forgetIfIdle(vm, s);
  }
}
