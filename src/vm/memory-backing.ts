// Smart Paging (Hyper-V's): where a VM's RAM lives on a host. A VM that allows it and finds
// too little room when it starts or arrives gets its RAM backed by a file in its paging folder
// instead of being refused; otherwise it gets ordinary memory. Pure, so it is unit-tested.
import { FerryError } from '../errors.js';

export type MemoryBacking = 'ram' | 'paging-file';

/** Memory the host keeps for itself beyond the VMs' (QEMU overhead, the agent): as compare-vm counts it. */
export const VM_MEMORY_RESERVE_MIB = 256;

export interface MemoryRoom {
  /** What the host view calls free for VMs (MemAvailable, capped by what running VMs may still touch). */
  freeMiB: number;
  /** `ferry host set H --max-vm-memory MIB`; null: no limit. */
  maxVmMiB: number | null;
  /** Memory of the VMs this host runs in ordinary RAM (paging-file VMs do not count). */
  vmMiB: number;
}

/** MiB a VM may still take in ordinary memory on a host: free memory minus the reserve, and the admin limit. */
export function roomForVms(r: MemoryRoom): number {
  const free = r.freeMiB - VM_MEMORY_RESERVE_MIB;
  const limit = r.maxVmMiB === null ? Infinity : r.maxVmMiB - r.vmMiB;
  return Math.max(0, Math.floor(Math.min(free, limit)));
}

export type BackingDecision = { backing: MemoryBacking } | { backing: null; roomMiB: number };

/** RAM when it fits; else a paging file for a VM that allows Smart Paging; else nothing (refuse). */
export function decideBacking(needMiB: number, roomMiB: number, smartPaging: boolean): BackingDecision {
  if (needMiB <= roomMiB) return { backing: 'ram' };
  if (smartPaging) return { backing: 'paging-file' };
  return { backing: null, roomMiB };
}

/** The refusal of a VM without Smart Paging on a host without room for it. */
export function noRoomError(action: 'start' | 'move', vm: string, host: string, roomMiB: number, needMiB: number) {
  return new FerryError(
    'E_VM_MEMORY',
    `Cannot ${action} VM '${vm}': host '${host}' has ${roomMiB} MiB for VMs, VM needs ${needMiB} MiB; ` +
      `raise --max-vm-memory ('ferry host set ${host} --max-vm-memory MIB'), free memory, ` +
      `or allow --smart-paging ('ferry vm set ${vm} --smart-paging on')`,
    { context: { vm, host, roomMiB, needMiB } },
  );
}
