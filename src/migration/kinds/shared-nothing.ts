// Shared nothing: the VM's disks are copied to the destination. A running VM's disks are
// mirrored over NBD, then its memory moves (kinds/live.ts's steps); a stopped VM's disks are
// filled with qemu-img and the destination registers it (kinds/offline.ts's steps), or, when the
// copy is resumable, copied by backup passes through a disk daemon (kinds/stopped-copy.ts). A VM with
// checkpoints sends its chain's read-only files first (kinds/chain.ts). Which steps
// run is decided when Begin (compare) finds the VM running or stopped; each step says so (`when`).
import type { MoveKind } from '../runner.js';
import type { SourceCtx } from '../source.js';
import { clusterQueueStep, compareStep, slotStep } from './common.js';
import {
  confirmStep,
  migrateStep,
  mirrorStep,
  postcopyStep,
  prepareStep,
  reachNbdStep,
  releaseSourceStep,
  resolveLive,
  switchoverStep,
  tlsStep,
} from './live.js';
import { chainStep } from './chain.js';
import { backupStep } from './backup-copy.js';
import { closeDisksStep, openDisksStep } from './stopped-copy.js';
import { confirmStoppedStep, copyStep, prepareStoppedStep, releaseStoppedStep, resolveStopped } from './offline.js';

export const sharedNothingKind: MoveKind<SourceCtx> = {
  name: 'shared-nothing',
  steps: [
    clusterQueueStep,
    slotStep,
    compareStep,
    openDisksStep,
    tlsStep,
    prepareStep,
    prepareStoppedStep,
    chainStep,
    reachNbdStep,
    mirrorStep,
    backupStep,
    closeDisksStep,
    copyStep,
    migrateStep,
    switchoverStep,
    postcopyStep,
    confirmStep,
    confirmStoppedStep,
    releaseSourceStep,
    releaseStoppedStep,
  ],
  resolve: (ctx, err, s) => (ctx.proc ? resolveLive(ctx, err, s) : resolveStopped(ctx, err, s)),
};
