// The Move wizard's choices and the requests they become. The browser only turns the
// user's choices into a request; the agents judge them (compare-vm, path checks).
import type { z } from 'zod';
import type { VmView } from '../../../src/api/schemas.js';
import type { ResumableMode } from '../../../src/api/defaults.js';
import type { MoveOptions, StorageMoveRequest } from '../../../src/migration/schemas.js';

export type MoveType = 'vm' | 'storage';
export type MoveOption = 'single' | 'items' | 'vmonly';

export interface Choices {
  type: MoveType | null;
  /** Destination host name (VM moves). */
  dest: string;
  option: MoveOption | null;
  /** "Move all the VM's data to a single location". */
  storagePath: string;
  /** Per disk: source path → destination path. */
  vhd: Record<string, string>;
  configPath: string;
  /** The folder of the checkpoint tree and files, and the Smart Paging folder. */
  checkpointPath: string;
  pagingPath: string;
  /** How the VM's disks are copied (`--resumable`): only asked when disks are copied. */
  resumable: ResumableMode;
}

export const STEP_TITLES: Record<number, string> = {
  1: 'Choose move type',
  2: 'Specify destination',
  3: 'Choose move options',
  4: 'Choose a new location',
  5: 'Check compatibility',
  6: 'Summary',
  7: 'Progress',
};

export function initialChoices(vm: VmView): Choices {
  return {
    type: null,
    dest: '',
    option: null,
    storagePath: '',
    vhd: Object.fromEntries(vm.disks.map((d) => [d.path, d.path])),
    configPath: vm.configPath,
    checkpointPath: vm.checkpointPath,
    pagingPath: vm.pagingPath,
    resumable: 'auto',
  };
}

/**
 * Whether the move copies the VM's disks (so how they are copied is the user's to choose): a
 * running VM's by the mirror or resumable passes, a stopped VM's by qemu-img or the same passes.
 */
export const copiesDisks = (_vm: VmView, c: Pick<Choices, 'option'>): boolean =>
  c.option !== null && c.option !== 'vmonly';

/** `--resumable` as the request says it: left out for the default. */
const resumableOf = (c: Choices): { resumable?: ResumableMode } =>
  c.resumable === 'auto' ? {} : { resumable: c.resumable };

/** With checkpoints a VM's disks are a chain held by its checkpoint folder: they move with it, not one by one. */
export const disksFollowChain = (vm: VmView): boolean => vm.checkpoints.length > 0;

const inside = (p: string, dir: string): boolean => p === dir || p.startsWith(`${dir.replace(/\/+$/, '')}/`);

/**
 * Where a folder of the VM ends up (as the agent plans it): its new place when given, else with
 * the configuration folder when it is inside it, else where it is.
 */
export function followed(vm: VmView, c: Choices, p: string, given?: string): string {
  const g = given?.trim();
  if (g && g !== p) return g;
  const cfg = c.configPath.trim() || vm.configPath;
  return inside(p, vm.configPath) ? cfg + p.slice(vm.configPath.replace(/\/+$/, '').length) : p;
}

/** Where a disk goes when it follows the checkpoint chain (its active layer is in the checkpoint folder). */
export function chainDiskPath(vm: VmView, c: Choices, disk: string): string {
  const ck = vm.checkpointPath.replace(/\/+$/, '');
  if (!inside(disk, ck)) return followed(vm, c, disk);
  return followed(vm, c, ck, c.checkpointPath) + disk.slice(ck.length);
}

/** The pages this move goes through, in order (fixed numbers: wizard-step-N). */
export function stepsFor(c: Choices): number[] {
  const out = [1];
  if (c.type !== 'storage') out.push(2);
  out.push(3);
  if (c.option !== 'vmonly') out.push(4);
  if (c.type !== 'storage') out.push(5);
  out.push(6, 7);
  return out;
}

/** Items the user gave a new place (unchanged ones are left out). */
export function changedItems(
  vm: VmView,
  c: Choices,
): { vhd?: Record<string, string>; configPath?: string; checkpointPath?: string; pagingPath?: string } {
  const vhd = Object.fromEntries(
    Object.entries(disksFollowChain(vm) ? {} : c.vhd)
      .map(([s, d]) => [s, d.trim()] as const)
      .filter(([s, d]) => d && d !== s),
  );
  const changed = (v: string, was: string): string | undefined => {
    const t = v.trim();
    return t && t !== was ? t : undefined;
  };
  const cfg = changed(c.configPath, vm.configPath);
  const ck = changed(c.checkpointPath, vm.checkpointPath);
  const pg = changed(c.pagingPath, vm.pagingPath);
  return {
    ...(Object.keys(vhd).length ? { vhd } : {}),
    ...(cfg ? { configPath: cfg } : {}),
    ...(ck ? { checkpointPath: ck } : {}),
    ...(pg ? { pagingPath: pg } : {}),
  };
}

export function moveOptions(vm: VmView, c: Choices): z.input<typeof MoveOptions> {
  if (c.option === 'vmonly' || c.option === null) return { includeStorage: false };
  if (c.option === 'single') return { includeStorage: true, storagePath: c.storagePath.trim(), ...resumableOf(c) };
  return { includeStorage: true, ...changedItems(vm, c), ...resumableOf(c) };
}

export function storageMoveBody(vm: VmView, c: Choices): z.input<typeof StorageMoveRequest> {
  if (c.option === 'single') return { vm: vm.name, path: c.storagePath.trim(), ...resumableOf(c) };
  return { vm: vm.name, ...changedItems(vm, c), ...resumableOf(c) };
}
