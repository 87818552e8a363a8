// Automatic fail-back (Hyper-V's "Failback" tab of a clustered role): when a clustered VM's
// first preferred owner is back (up, not paused, may hold HA VMs) after the VM had to leave
// it, the leader moves the VM home — at once, never, or only while the clock is inside a
// window such as 22:00-02:00. Pure: the leader (failback-runner.ts) feeds it the cluster as
// read from etcd and the time. Windows are in the leader's local time (the TZ of its agent),
// as Hyper-V uses the cluster node's clock; a window may cross midnight.

/** The setting as stored and typed: 'immediately', 'never' or 'HH:MM-HH:MM'. */
export type FailbackSetting = string;
export const FAILBACK_FORMS = "'immediately', 'never' or a window 'HH:MM-HH:MM' (the leader's local time)";

export type FailbackWindow =
  | { kind: 'immediately' }
  | { kind: 'never' }
  /** Minutes after local midnight; `end` is excluded; end < start crosses midnight. */
  | { kind: 'window'; start: number; end: number };

const HHMM = /^([01]\d|2[0-3]):([0-5]\d)$/;

function minutes(s: string): number | null {
  const m = HHMM.exec(s);
  return m?.[1] && m[2] ? Number(m[1]) * 60 + Number(m[2]) : null;
}

/** Why `s` is not a fail-back setting, or null when it is one. */
export function failbackProblem(s: string): string | null {
  if (s === 'immediately' || s === 'never') return null;
  const parts = s.split('-');
  if (parts.length !== 2) return `'${s}' is not ${FAILBACK_FORMS}`;
  const [a = '', b = ''] = parts;
  const start = minutes(a);
  const end = minutes(b);
  if (start === null || end === null) return `'${s}' is not ${FAILBACK_FORMS}; times are 00:00 to 23:59`;
  if (start === end) return `window '${s}' is empty (start = end); for any time use 'immediately'`;
  return null;
}

/** The parsed setting; a malformed one throws (check it with failbackProblem first). */
export function parseFailback(s: FailbackSetting): FailbackWindow {
  const bad = failbackProblem(s);
  if (bad) throw new RangeError(bad);
  if (s === 'immediately' || s === 'never') return { kind: s };
  const [a = '', b = ''] = s.split('-');
  return { kind: 'window', start: minutes(a) ?? 0, end: minutes(b) ?? 0 };
}

/** Minutes after midnight of `at` in this process's local time zone (TZ). */
export function localMinutes(at: Date): number {
  return at.getHours() * 60 + at.getMinutes();
}

/** May a fail-back start at `minute` (local minutes after midnight)? */
export function inWindow(w: FailbackWindow, minute: number): boolean {
  if (w.kind === 'immediately') return true;
  if (w.kind === 'never') return false;
  return w.start < w.end ? minute >= w.start && minute < w.end : minute >= w.start || minute < w.end;
}

/** A clustered VM as the fail-back decision sees it. */
export interface FailbackVm {
  name: string;
  /** Where the cluster's record says it runs. */
  owner: string;
  preferredOwners: string[];
  failback: FailbackSetting;
}

/** A node as the fail-back decision sees it. */
export interface FailbackNode {
  name: string;
  up: boolean;
  paused: boolean;
  /** May hold HA VMs (leader-eligible). */
  mayHold: boolean;
  /** A drain or fail-back of it is running. */
  busy: boolean;
  /** The VMs its last drain moved away (its batch's items that were moved). */
  drained?: readonly string[];
}

/**
 * Which VMs are away from home, for one pass of the leader: a VM becomes "away" when it left its
 * first preferred owner because that node went: an HA restart off it (marked in the same write,
 * ha.ts), or a drain of it (marked by the pass that sees the node unavailable and the VM among
 * what its drain moved). The fail-back of an away VM is started at most once, then it is home
 * again (whatever the move's result). A VM an administrator moved off its home, before or while
 * home was away, is not away, so it is not pulled back (as in Hyper-V, where only roles that
 * failed over or were drained fail back). The marks live in the VMs' cluster records (`away`):
 * the runner seeds this from them and writes back what changed.
 */
export class AwayVms {
  private readonly away: Map<string, string>;

  constructor(marks: Iterable<[string, string]> = []) {
    this.away = new Map(marks);
  }

  has(vm: string): boolean {
    return this.away.has(vm);
  }

  /** The node `vm` waits to go back to, if it is away. */
  get(vm: string): string | undefined {
    return this.away.get(vm);
  }

  /** VM → the node it waits to go back to. */
  entries(): Array<[string, string]> {
    return [...this.away];
  }

  /** The fail-back of `vm` started (or it is home, or no longer clustered): forget it. */
  done(vm: string): void {
    this.away.delete(vm);
  }

  /**
   * One decision: marks VMs away, forgets those home or gone, and returns the moves to start
   * now (VM → its preferred owner), grouped by that node.
   */
  decide(
    vms: FailbackVm[],
    nodes: FailbackNode[],
    minute: number,
    /** Filled with why each VM still away does not go home in this pass. */
    waiting?: Map<string, string>,
  ): Map<string, Array<{ vm: string; from: string }>> {
    const byName = new Map(nodes.map((n) => [n.name, n]));
    const names = new Set(vms.map((v) => v.name));
    for (const vm of this.away.keys()) if (!names.has(vm)) this.away.delete(vm);
    const due = new Map<string, Array<{ vm: string; from: string }>>();
    for (const vm of vms) {
      const home = vm.preferredOwners[0];
      if (!home || vm.owner === home) {
        this.away.delete(vm.name);
        continue;
      }
      // A mark for a node that is no longer its home (its preferred owners changed) ends.
      const marked = this.away.get(vm.name);
      if (marked !== undefined && marked !== home) this.away.delete(vm.name);
      const h = byName.get(home);
      const available = !!h && h.up && !h.paused && h.mayHold;
      if (!available) {
        if (h?.drained?.includes(vm.name)) this.away.set(vm.name, home);
        if (this.away.get(vm.name) === home)
          waiting?.set(
            vm.name,
            !h
              ? `${home} is not a member`
              : !h.up
                ? `${home} is down`
                : h.paused
                  ? `${home} is paused`
                  : `${home} may not hold HA VMs`,
          );
        continue;
      }
      if (this.away.get(vm.name) !== home) continue;
      const w = safeParse(vm.failback);
      if (w.kind === 'never') {
        // Home is back and this VM does not fail back: that return is over for it.
        this.away.delete(vm.name);
        continue;
      }
      const from = byName.get(vm.owner);
      const wait = h.busy
        ? `a drain or fail-back of ${home} runs`
        : !from?.up
          ? `the VM's node ${vm.owner} is down`
          : !inWindow(w, minute)
            ? `outside the VM's fail-back window ${vm.failback}`
            : null;
      if (wait !== null) {
        waiting?.set(vm.name, wait); // still away: a later pass
        continue;
      }
      const list = due.get(home) ?? [];
      list.push({ vm: vm.name, from: vm.owner });
      due.set(home, list);
    }
    return due;
  }
}

/** `r` (a VM's cluster record) with its away mark set to `home`, or without one. */
export function withAway<T extends { away?: string | undefined }>(r: T, home: string | undefined): T {
  const next = { ...r };
  delete next.away;
  return home ? { ...next, away: home } : next;
}

/** A record written by a peer is parsed by its schema; anything else counts as 'never'. */
function safeParse(s: FailbackSetting): FailbackWindow {
  return failbackProblem(s) === null ? parseFailback(s) : { kind: 'never' };
}
