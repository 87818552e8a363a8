// What a storage move's steps share (storage.ts, and the resumable copy's storage-resume.ts).
import path from 'node:path';
import type { QemuProcess } from '../../qemu/process.js';
import type { StorageDaemon } from '../../qemu/storage-daemon.js';
import type { VmSpec } from '../../vm/spec.js';
import type { MoveHost } from '../host.js';
import type { Job } from '../job.js';
import type { StoragePlan } from '../plan.js';
import type { SlotQueue } from '../queue.js';

export interface StorageCtx {
  host: MoveHost;
  job: Job;
  slots: SlotQueue;
  plan: StoragePlan;
  spec: VmSpec;
  proc: QemuProcess | null;
  /** A stopped VM's disks opened for a resumable copy (stopped-copy.ts). */
  daemon?: StorageDaemon | null;
}

/** The VM's disks this move gives a new place (the others stay where they are). */
export const moving = (ctx: Pick<StorageCtx, 'spec' | 'plan'>): VmSpec['disks'] =>
  ctx.spec.disks.filter((d) => {
    const dest = ctx.plan.disks[d.id];
    return dest !== undefined && path.resolve(dest) !== path.resolve(d.path);
  });
