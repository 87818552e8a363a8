// Host-to-host actions of the migration protocol (a host certificate may call these).
import * as z from 'zod';
import { action } from './action.js';
import { Name } from './schemas.js';
import { IdParams, StepMs, StepName } from '../migration/schemas.js';
import { VmSpec } from './vm-spec.js';
import { CheckpointTree } from '../checkpoint/model.js';
import { ResumeKey, ResumeOffer } from '../migration/resume-marker.js';

const peer = ['admin', 'host'] as const;

/**
 * Bounds of what a peer may send to be created here: the files of a VM folder (kernel,
 * initrd, cloud-init seed) travel inside the request, so they set the route's body limit.
 */
export const INCOMING_LIMITS = {
  disks: 64,
  files: 16,
  /** Decoded bytes of all files together (a distribution's kernel and initrd fit with room). */
  fileBytes: 96 * 1024 * 1024,
  /** Files of a checkpoint chain (read-only overlays, memory files, base images), and each one's size. */
  chainFiles: 512,
  chainFileBytes: 16 * 1024 ** 4,
} as const;
/** Base64 of the files plus the spec and the request's other fields. */
const INCOMING_BODY_LIMIT = Math.ceil((INCOMING_LIMITS.fileBytes * 4) / 3) + 1024 * 1024;
const b64Len = (bytes: number): number => Math.ceil(bytes / 3) * 4;
/** A sent file's decoded size (base64: at most this many bytes). */
const fileBytes = (f: { size?: number | undefined; base64?: string | undefined }): number =>
  f.size ?? Math.floor(((f.base64 ?? '').length * 3) / 4);

export const IncomingRequest = z
  .object({
    jobId: z.string().regex(/^[A-Za-z0-9-]{1,64}$/),
    source: Name,
    /** The VM's spec as the source runs it (vm.json), checked field by field on arrival. */
    spec: VmSpec,
    tls: z.boolean(),
    postcopy: z.boolean(),
    /** The memory comes over this many parallel streams (QEMU's multifd; 0: one stream). */
    multifdChannels: z.number().int().min(0).max(8).default(0),
    /** A stopped VM: only its disks are received (QEMU runs paused, just to serve NBD). */
    stopped: z.boolean().default(false),
    /** Shared nothing: create these here and receive their contents over NBD. */
    storage: z
      .object({
        disks: z
          .array(
            z
              .object({
                id: z.string().regex(/^[a-z][a-z0-9]{0,15}$/),
                path: z.string().max(4096),
                format: z.enum(['qcow2', 'raw', 'vhdx', 'vpc']),
                virtualSizeBytes: z.number().int().positive(),
                allocatedBytes: z.number().int().min(0),
              })
              .strict(),
          )
          .max(INCOMING_LIMITS.disks),
        /** The VM's folders (config, checkpoints, paging): at most these three. */
        dirs: z.array(z.string().max(4096)).max(3),
        /**
         * The VM folder's files: their bytes after the JSON (`size`, incoming-body.ts), or inside it
         * as `base64` (a source of an older version).
         */
        files: z
          .array(
            z
              .object({
                path: z.string().max(4096),
                size: z.number().int().min(0).max(INCOMING_LIMITS.fileBytes).optional(),
                base64: z
                  .string()
                  .max(b64Len(INCOMING_LIMITS.fileBytes))
                  .regex(/^[A-Za-z0-9+/]*={0,2}$/, { message: 'must be base64' })
                  .optional(),
              })
              .strict()
              .refine((f) => (f.size === undefined) !== (f.base64 === undefined), {
                message: "needs either 'size' (its bytes after the JSON) or 'base64', not both",
              }),
          )
          .max(INCOMING_LIMITS.files)
          .refine((fs) => fs.reduce((n, f) => n + fileBytes(f), 0) <= INCOMING_LIMITS.fileBytes, {
            message: `must hold at most ${INCOMING_LIMITS.fileBytes / 1048576} MiB of files together`,
          }),
        /**
         * A VM with checkpoints: its tree as it reads here (base paths rewritten) and the chain's
         * read-only files, created here and written by the source over NBD before the VM's QEMU starts.
         */
        chain: z
          .object({
            tree: CheckpointTree,
            files: z
              .array(
                z
                  .object({
                    path: z.string().max(4096),
                    bytes: z.number().int().min(0).max(INCOMING_LIMITS.chainFileBytes),
                  })
                  .strict(),
              )
              .max(INCOMING_LIMITS.chainFiles),
          })
          .strict()
          .optional(),
        /**
         * The source copies by backup passes with a bitmap of this key (resume-copy.ts): the
         * destination writes its exports through and keeps a cut move's images for a retry.
         */
        resumeKey: ResumeKey.optional(),
        /** A retry: the disks whose kept image the source can resume (resume-marker.ts). */
        resume: z.array(ResumeOffer).max(INCOMING_LIMITS.disks).optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  // QEMU 7.2 refuses multifd with post-copy, and a stopped VM sends no memory: say so here, not
  // as a QEMU error half-way through setting up the destination.
  .refine((r) => r.multifdChannels === 0 || (!r.postcopy && !r.stopped), {
    message: 'memory streams (multifdChannels > 0) go only with a running VM moved without post-copy; send 0',
    path: ['multifdChannels'],
  });
export type IncomingRequest = z.infer<typeof IncomingRequest>;

/** One of Prepare's or finish's steps on the destination (IncomingView.steps). */
export const IncomingStep = z.object({ name: StepName, atMs: StepMs, ms: StepMs, failed: z.boolean().optional() });
/** At most this many of them in an answer. */
export const MAX_INCOMING_STEPS = 32;

export const IncomingView = z.object({
  jobId: z.string(),
  vm: z.string(),
  state: z.enum(['prepared', 'running', 'failed', 'gone']),
  uri: z.string().nullable(),
  tlsHostname: z.string(),
  reason: z.string().nullable(),
  nbd: z.object({ host: z.string(), port: z.number() }).nullable(),
  /** A chain to receive first: the NBD server of its files (export `chain<N>` is file N of the request). */
  chainNbd: z.object({ host: z.string(), port: z.number() }).nullable().optional(),
  /** The VM arrives not HA here (it left its cluster): why, for the move's log. */
  haNote: z.string().optional(),
  /**
   * Prepare's steps here: ms after the request arrived, and how long each took (the source's record
   * shows them, and `migration show` prints them: a step's name is a plain word, never a terminal's escape).
   */
  steps: z.array(IncomingStep).max(MAX_INCOMING_STEPS).optional(),
  /** Per disk of a resumable copy: whether its kept image is written on from the cut, or why not. */
  resume: z
    .array(z.object({ diskId: z.string(), resume: z.boolean(), why: z.string().max(300).optional() }))
    .max(INCOMING_LIMITS.disks)
    .optional(),
});
export type IncomingView = z.infer<typeof IncomingView>;

export const AdoptRequest = z.object({ source: Name, spec: VmSpec }).strict();

export const peerActions = {
  vms: action({
    name: 'peer.vms',
    method: 'GET',
    path: '/v1/peer/vms',
    summary: 'Names and ids of the VMs on this host',
    response: z.array(z.object({ name: z.string(), id: z.string() })),
    roles: peer,
  }),
  cpuModels: action({
    name: 'peer.cpu-models',
    method: 'GET',
    path: '/v1/peer/cpu-models',
    summary: "CPU models and their unavailable features under this host's accelerator",
    response: z.array(
      z.object({ name: z.string(), unavailableFeatures: z.array(z.string()), migrationSafe: z.boolean() }),
    ),
    roles: peer,
  }),
  prepare: action({
    name: 'peer.incoming.prepare',
    method: 'POST',
    path: '/v1/peer/incoming',
    summary: 'Prepare to receive a VM: start QEMU waiting for the stream',
    body: IncomingRequest,
    response: IncomingView,
    roles: peer,
    bodyLimit: INCOMING_BODY_LIMIT,
  }),
  status: action({
    name: 'peer.incoming.status',
    method: 'GET',
    path: '/v1/peer/incoming/:id',
    summary: 'State of an incoming VM',
    params: IdParams,
    response: IncomingView,
    roles: peer,
  }),
  chain: action({
    name: 'peer.incoming.chain',
    method: 'POST',
    path: '/v1/peer/incoming/:id/chain',
    summary: 'The checkpoint chain is written: stop serving it, start QEMU waiting for the stream and the disks',
    params: IdParams,
    response: IncomingView,
    roles: peer,
  }),
  finish: action({
    name: 'peer.incoming.finish',
    method: 'POST',
    path: '/v1/peer/incoming/:id/finish',
    summary: 'The source completed and confirms: run the VM here',
    params: IdParams,
    response: IncomingView,
    roles: peer,
  }),
  abort: action({
    name: 'peer.incoming.abort',
    method: 'POST',
    path: '/v1/peer/incoming/:id/abort',
    summary: 'Abandon an incoming VM: kill its QEMU, remove what was created',
    params: IdParams,
    // discard=true (a cancelled move): no partial copy is kept for a retry to resume from.
    query: z
      .object({
        discard: z
          .enum(['true', 'false'])
          .default('false')
          .transform((v) => v === 'true'),
      })
      .strict(),
    response: z.object({ ok: z.literal(true) }),
    roles: peer,
  }),
  haStart: action({
    name: 'peer.ha-start',
    method: 'POST',
    path: '/v1/peer/ha-start',
    summary: 'HA: register and cold-boot a VM whose node is down (the leader decided, with a fencing generation)',
    body: z.object({ spec: VmSpec, generation: z.number().int().min(1), from: Name }).strict(),
    response: z.object({ ok: z.literal(true) }),
    roles: peer,
  }),
  adopt: action({
    name: 'peer.adopt',
    method: 'POST',
    path: '/v1/peer/adopt',
    summary: 'Register a stopped VM whose files this host already sees',
    body: AdoptRequest,
    response: z.object({ ok: z.literal(true), haNote: z.string().optional() }),
    roles: peer,
  }),
} as const;
