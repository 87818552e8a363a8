// A guest that dies right after a move must be explained, never ignored. For a while after
// a VM arrives, the destination watches its QEMU for the guest restarting itself (RESET from
// the guest: a kernel panic with `panic=N`, a triple fault, sysrq-b), reporting a panic
// (GUEST_PANICKED, with a pvpanic device) or powering off (SHUTDOWN from the guest), and says
// so: an event, a warning in the agent's log and a line in `ferry vm show`. Ferry cannot tell
// a crash from a reboot the guest's own administrator asked for; it reports what QEMU saw and
// when, and the likely cause where one is known (QEMU 7.2 under TCG on a busy host).
import type { QemuProcess } from '../qemu/process.js';
import type { QmpEvent } from '../qemu/commands.js';

/** How long after an arrival a guest's own reset, panic or power-off is tied to the move. */
export const AFTER_ARRIVAL_WINDOW_MS = 60_000;

export interface AfterArrival {
  /** The host it came from and the move. */
  from: string;
  migration: string;
  /** When it ran here (ISO time). */
  arrivedAt: string;
  /** What the guest did, if anything, within the window. */
  trouble: { what: 'reset' | 'panic' | 'shutdown'; reason: string; afterMs: number } | null;
}

/** The guest's own doing (not an administrator's `vm restart`/`vm stop`, which QEMU marks `guest: false`). */
export function troubleOf(e: QmpEvent): { what: 'reset' | 'panic' | 'shutdown'; reason: string } | null {
  const d = e.data ?? {};
  const text = (v: unknown, dflt: string): string => (typeof v === 'string' ? v : dflt);
  if (e.event === 'GUEST_PANICKED') return { what: 'panic', reason: text(d.action, 'panicked') };
  if (d.guest !== true) return null;
  if (e.event === 'RESET') return { what: 'reset', reason: text(d.reason, 'guest-reset') };
  if (e.event === 'SHUTDOWN') return { what: 'shutdown', reason: text(d.reason, 'guest-shutdown') };
  return null;
}

/** The sentence an administrator reads. */
export function describeTrouble(vm: string, a: AfterArrival, accelerator: string): string {
  const t = a.trouble;
  if (!t) return `VM '${vm}' arrived from '${a.from}' at ${a.arrivedAt} (move ${a.migration})`;
  const did =
    t.what === 'reset' ? 'restarted itself' : t.what === 'panic' ? 'reported a kernel panic' : 'powered itself off';
  const secs = (t.afterMs / 1000).toFixed(1);
  const cause =
    accelerator === 'tcg'
      ? "this host runs guests without KVM (TCG), where QEMU 7.2 can lose a Linux guest's writes during a " +
        "move when the host's CPU is busy; read the guest's console log (ferry vm console), and boot the " +
        'guest with pti=on on its kernel command line (docs/tcg-moves.md) or move it on a quieter host'
      : "read the guest's console log (ferry vm console) for the reason";
  const when = `${secs} s after arriving from '${a.from}'`;
  return `VM '${vm}' ${did} ${when} (move ${a.migration}, QEMU: ${t.reason}); ${cause}`;
}

/**
 * Watches `proc` for AFTER_ARRIVAL_WINDOW_MS from event index `since` (the mark taken before
 * the VM ran here) and calls `onTrouble` once with the first trouble seen. Never throws: the
 * VM's QEMU exiting or the window ending simply ends the watch.
 */
export function watchAfterArrival(
  proc: QemuProcess,
  a: AfterArrival,
  since: number,
  onTrouble: (a: AfterArrival) => void,
  windowMs = AFTER_ARRIVAL_WINDOW_MS,
): void {
  const t0 = Date.parse(a.arrivedAt);
  void proc.qmp
    .waitEvent((e) => troubleOf(e) !== null, { since, timeoutMs: windowMs, what: 'watch the guest after its move' })
    .then(
      (e) => {
        const t = troubleOf(e);
        if (!t) return;
        const at = e.timestamp ? e.timestamp.seconds * 1000 + Math.floor(e.timestamp.microseconds / 1000) : Date.now();
        a.trouble = { ...t, afterMs: Math.max(0, at - t0) };
        onTrouble(a);
      },
      () => undefined,
    );
}
