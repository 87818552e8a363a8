// Where VMs go: the placement used by drain plans, fail-over and the scheduler's checks.
// Pure, so it is unit-tested and benchmarked without a cluster. Rules, in order: the node is
// up and not paused; the VM's memory fits in what is free there (minus what this plan already
// put there); no VM with a shared anti-affinity class is there (soft, as in Hyper-V: when
// every node conflicts the VM still goes, with a warning); then the VM's preferred owners in
// their order; then the node with the most free memory. A VM that allows Smart Paging goes to
// a node without room only when no node has room (its RAM then lives in a paging file there).
import { RANK, type Priority } from './model.js';

export interface PlacementNode {
  name: string;
  up: boolean;
  paused: boolean;
  freeMiB: number;
  /** Why a node whose lease lives counts as not up (its agent did not answer: the error). */
  unreachable?: string;
}
export interface PlacedVm {
  vm: string;
  node: string;
  antiAffinity: string[];
}
export interface VmToPlace {
  name: string;
  memoryMiB: number;
  priority: Priority;
  preferredOwners: string[];
  antiAffinity: string[];
  /** Nodes it must not go to (its current node, nodes where the compatibility check failed). */
  exclude?: string[];
  /** It may run from a paging file on a node without room for its memory (a last resort). */
  smartPaging?: boolean;
}
export interface Placement {
  vm: string;
  to: string | null;
  reason: string | null;
  warnings: string[];
}

export function place(nodes: PlacementNode[], existing: PlacedVm[], vms: VmToPlace[]): Placement[] {
  const free = new Map(nodes.map((n) => [n.name, n.freeMiB]));
  const freeOn = (n: string): number => free.get(n) ?? 0;
  const classes = new Map<string, Set<string>>(nodes.map((n) => [n.name, new Set<string>()]));
  const classesOn = (n: string): Set<string> => {
    let c = classes.get(n);
    if (!c) classes.set(n, (c = new Set<string>()));
    return c;
  };
  for (const e of existing) for (const c of e.antiAffinity) classes.get(e.node)?.add(c);
  const order = [...vms].sort((a, b) => RANK[a.priority] - RANK[b.priority] || a.name.localeCompare(b.name));
  const out: Placement[] = [];
  for (const vm of order) {
    const open = nodes.filter((n) => n.up && !n.paused && !(vm.exclude ?? []).includes(n.name));
    if (!open.length) {
      out.push({
        vm: vm.name,
        to: null,
        reason: 'no other node is up and not paused; resume or add a node',
        warnings: [],
      });
      continue;
    }
    const roomy = open.filter((n) => freeOn(n.name) >= vm.memoryMiB);
    const paged = !roomy.length && vm.smartPaging === true;
    const fit = paged ? open : roomy;
    if (!fit.length) {
      const best = Math.max(...open.map((n) => freeOn(n.name)));
      out.push({
        vm: vm.name,
        to: null,
        reason:
          `needs ${vm.memoryMiB} MiB of memory but the most free on an eligible node is ` +
          `${Math.max(0, Math.floor(best))} MiB; free memory or add a node`,
        warnings: [],
      });
      continue;
    }
    const conflicts = (n: PlacementNode): boolean => vm.antiAffinity.some((c) => classesOn(n.name).has(c));
    const clean = fit.filter((n) => !conflicts(n));
    const pool = clean.length ? clean : fit;
    const pref = (n: PlacementNode): number => {
      const i = vm.preferredOwners.indexOf(n.name);
      return i < 0 ? Infinity : i;
    };
    pool.sort((a, b) => pref(a) - pref(b) || freeOn(b.name) - freeOn(a.name) || a.name.localeCompare(b.name));
    const [to] = pool;
    if (!to) continue; // pool is fit or clean, both non-empty here
    const warnings =
      clean.length || !vm.antiAffinity.length
        ? []
        : [
            `anti-affinity (${vm.antiAffinity.join(', ')}) cannot be kept: ` +
              'every eligible node already runs a VM of that class',
          ];
    if (paged)
      warnings.push(
        `no node has ${vm.memoryMiB} MiB free (most: ${Math.floor(freeOn(to.name))} MiB on '${to.name}'): ` +
          'its memory will be a Smart Paging file there',
      );
    // A paging-file VM takes no RAM from the node.
    if (!paged) free.set(to.name, freeOn(to.name) - vm.memoryMiB);
    for (const c of vm.antiAffinity) classesOn(to.name).add(c);
    out.push({ vm: vm.name, to: to.name, reason: null, warnings });
  }
  return out;
}

/**
 * What kept each other node from taking a dead node's VMs, for the refusal an operator reads
 * (a node can look up in `cluster status` and still be no place to go).
 */
export function whyNot(
  /** The nodes as read (members, live leases, pauses), before any beat was counted. */
  read: { members: Record<string, unknown>; up: Record<string, unknown>; paused: ReadonlySet<string> },
  stale: ReadonlySet<string>,
  barred: readonly string[],
  pnodes: readonly PlacementNode[],
  dead: string,
): string {
  const one = (n: string): string => {
    if (!read.up[n]) return 'down';
    if (stale.has(n)) return 'its beat stood still';
    if (barred.includes(n)) return 'may not hold HA VMs';
    if (read.paused.has(n)) return 'paused';
    const p = pnodes.find((x) => x.name === n);
    return p?.unreachable === undefined ? 'up' : `its agent did not answer: ${p.unreachable}`;
  };
  return Object.keys(read.members)
    .filter((n) => n !== dead)
    .sort()
    .map((n) => `${n}: ${one(n)}`)
    .join('; ');
}
