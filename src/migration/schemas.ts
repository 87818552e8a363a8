// Migration records and requests: the contract of shared/CLI.md ("A migration record").
import { DEFAULTS, PRIORITIES, RESUMABLE_MODES } from '../api/defaults.js';
import * as z from 'zod';
import { Name } from '../api/schemas.js';
import { MIGRATION_STATES } from './states.js';

export { MIGRATION_STATES, TERMINAL, type MigrationState } from './states.js';

export const Incompatibility = z.object({ code: z.string(), message: z.string(), field: z.string() });
export type Incompatibility = z.infer<typeof Incompatibility>;
/** What a live move will do, predicted before it starts (`compare-vm --predict`); units in the names. */
export const Prediction = z.object({
  madeAt: z.string(),
  memoryMiB: z.number(),
  /** QEMU's calc-dirty-rate over `dirtySampleMs`. */
  dirtyRateMiBps: z.number(),
  dirtyMode: z.enum(['page-sampling', 'dirty-bitmap']),
  dirtySampleMs: z.number(),
  /** The memory the guest keeps rewriting, when a second, longer sample showed it (absent: not seen). */
  workingSetMiB: z.number().optional(),
  linkMiBps: z.number(),
  /** history: QEMU's rate in recent moves to that host; bandwidth: the --bandwidth cap; assumed: neither. */
  linkSource: z.enum(['history', 'bandwidth', 'assumed']),
  /**
   * MiB/s of guest memory whose pages are zero that the first pass gets through, from the same
   * history (absent: no history, and priced as free).
   */
  zeroMiBps: z.number().optional(),
  /** history: fitted apart from the data's rate; assumed: a fixed share of a data page's time (predict.ts). */
  zeroSource: z.enum(['history', 'assumed']).optional(),
  /** A switch-over's cost beyond its last pages (device state, vCPUs, handshake), learnt likewise; in downtimeMs. */
  switchMs: z.number().optional(),
  /** Time of a move outside its memory copy (prepare, switch-over), from the same history or assumed. */
  overheadMs: z.number(),
  /** The share of its memory the first pass puts on the wire (absent: every page), and how it was measured. */
  wireShare: z.number().min(0).max(1).optional(),
  /** sampled: pages of guest RAM read and checked for zeroes; resident: the RAM its QEMU holds (an upper bound). */
  wireShareFrom: z.enum(['sampled', 'resident']).optional(),
  maxDowntimeMs: z.number(),
  finishWithinMs: z.number(),
  totalMs: z.number(),
  /** null: the move would be given up before the guest pauses. */
  downtimeMs: z.number().nullable(),
  /** QEMU's dirty-bitmap syncs, as the record's `passes` counts them (setup, each pass end, switch-over). */
  passes: z.number(),
  /** Finishes in pre-copy within --max-downtime. */
  converges: z.boolean(),
  /** The convergence ladder's step it needs (policy.ts). */
  step: z.enum(['pre-copy', 'raise-downtime', 'auto-converge', 'post-copy', 'abort']),
  downtimeLimitMs: z.number(),
  throttlePct: z.number(),
  summary: z.string(),
});
export type Prediction = z.infer<typeof Prediction>;

export const CompareReport = z.object({
  compatible: z.boolean(),
  incompatibilities: z.array(Incompatibility),
  prediction: Prediction.optional(),
  /** What the move will do that is not a blocker (e.g. a Smart Paging file on the destination). */
  warnings: z.array(Incompatibility).optional(),
});
export type CompareReport = z.infer<typeof CompareReport>;

const AbsPath = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => p.startsWith('/') && !p.includes('\0'), { message: 'must be an absolute path' });

export const MoveOptions = z
  .object({
    includeStorage: z.boolean().default(false),
    storagePath: AbsPath.optional(),
    vhd: z.record(AbsPath, AbsPath).optional(),
    configPath: AbsPath.optional(),
    checkpointPath: AbsPath.optional(),
    pagingPath: AbsPath.optional(),
    retainSource: z.boolean().default(false),
    /**
     * How a running VM's disks are copied (shared nothing): `auto` (absent) copies by resumable
     * backup passes only when the disks hold at least RESUMABLE_MIN_BYTES, else by the mirror;
     * `always` / `never` force one (docs/moves.md, "Resumable disk copy").
     */
    resumable: z.enum(RESUMABLE_MODES).optional(),
  })
  .strict();
export type MoveOptions = z.infer<typeof MoveOptions>;

export const PolicyInput = z
  .object({
    maxDowntimeMs: z.number().int().min(1).max(600_000).default(DEFAULTS.maxDowntimeMs),
    finishWithinS: z.number().int().min(1).max(86_400).optional(),
    priority: z.enum(PRIORITIES).default(DEFAULTS.priority),
    bandwidthMiBps: z.number().int().min(1).max(1_000_000).optional(),
    allowPostcopy: z.boolean().default(false),
  })
  .strict();
export type PolicyInput = z.infer<typeof PolicyInput>;

export const Destination = z
  .object({
    name: Name,
    endpoint: z.url().refine((u) => u.startsWith('https://'), { message: 'must be an https:// endpoint' }),
  })
  .strict();
export type Destination = z.infer<typeof Destination>;

export const MoveRequest = z
  .object({
    /** Chosen by the caller to make the request idempotent (the cluster's drains do). */
    id: z
      .string()
      .regex(/^[A-Za-z0-9-]{8,64}$/, { message: 'must be 8–64 letters, digits or dashes' })
      .optional(),
    /** The drain or fail-back this move belongs to (shown in the cluster queue). */
    batch: z
      .string()
      .regex(/^(drain|failback):[A-Za-z0-9._-]{1,63}$/)
      .optional(),
    vm: Name,
    to: Destination,
    options: MoveOptions.default({ includeStorage: false, retainSource: false }),
    policy: PolicyInput.default({
      maxDowntimeMs: DEFAULTS.maxDowntimeMs,
      priority: DEFAULTS.priority,
      allowPostcopy: false,
    }),
  })
  .strict();
export type MoveRequest = z.infer<typeof MoveRequest>;

export const CompareRequest = MoveRequest.pick({ vm: true, to: true, options: true }).extend({
  /** Measure the guest and predict the move (a running VM only; takes a few seconds). */
  predict: z.boolean().default(false),
  /** The policy the move would run with (the prediction's --max-downtime etc.). */
  policy: PolicyInput.optional(),
});

export const StorageMoveRequest = z
  .object({
    vm: Name,
    /** Everything to one folder… */
    path: AbsPath.optional(),
    /** …or per item. */
    vhd: z.record(AbsPath, AbsPath).optional(),
    configPath: AbsPath.optional(),
    checkpointPath: AbsPath.optional(),
    pagingPath: AbsPath.optional(),
    priority: z.enum(PRIORITIES).default(DEFAULTS.priority),
    bandwidthMiBps: z.number().int().min(1).max(1_000_000).optional(),
    /** How a running VM's disks are copied: as for move-vm (docs/moves.md, "Resumable disk copy"). */
    resumable: z.enum(RESUMABLE_MODES).optional(),
  })
  .strict()
  .refine((r) => r.path || r.vhd || r.configPath || r.checkpointPath || r.pagingPath, {
    message: 'needs --path, --vhd, --config-path, --checkpoint-path or --paging-path',
  });
export type StorageMoveRequest = z.infer<typeof StorageMoveRequest>;

export const MigrationEvent = z.object({ at: z.string(), message: z.string() });

/**
 * One step of a move and how long it took (the runner's steps, on each end): where a move's time
 * went, kept in its record. `atMs` counts from the record's `createdAt` on the source's clock; a
 * destination's steps are placed from when the source sent its Prepare (its clock is not ours).
 */
/** A step's name: a plain word (it is printed on terminals, and a peer's passes through here). */
export const StepName = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,39}$/, 'a step name: lower-case letters, digits and dashes');
/** A step's start or length, ms: never negative, at most a week. */
export const StepMs = z
  .number()
  .min(0)
  .max(7 * 86_400_000);

/** Step times are kept to a tenth of a millisecond. */
export const tenthMs = (x: number): number => Math.round(x * 10) / 10;

export const StepTime = z.object({
  name: StepName,
  on: z.enum(['source', 'destination']),
  atMs: z.number(),
  ms: z.number(),
  /** The step threw (the move then undid, resolved or reported, as its phase says). */
  failed: z.boolean().optional(),
});
export type StepTime = z.infer<typeof StepTime>;

/** At most this many steps are kept in a record (a move has about 15; a retry loop must not grow it). */
export const MAX_STEP_TIMES = 64;

export const MigrationRecord = z.object({
  id: z.string(),
  vm: z.string(),
  kind: z.enum(['live', 'shared-nothing', 'storage', 'offline']),
  source: z.string(),
  destination: z.string(),
  /** Where the destination's agent answers (kept so a restarted source can finish or roll back). */
  destinationEndpoint: z.string().nullable(),
  state: z.enum(MIGRATION_STATES),
  priority: z.enum(PRIORITIES),
  queuePosition: z.number().nullable(),
  progress: z.number(),
  etaSeconds: z.number().nullable(),
  verdict: z.enum(['converging', 'stalled', 'not-converging']).nullable(),
  downtimeMs: z.number().nullable(),
  /**
   * What the downtime was spent on: the bytes sent with the guest paused for the switch-over
   * (QEMU's last memory pass as its `ram.transferred` counts it, without the device state in
   * 7.2, and what the disks still owed: a mirror's last writes, a resumable copy's last pass).
   * Absent for post-copy, a mirror's storage move (no pause) and records older than the field.
   */
  pausedBytes: z.number().nullable().optional(),
  totalMs: z.number().nullable(),
  bytesTransferred: z.number(),
  /**
   * The guest memory a live move sent, as QEMU counts it when done: bytes of pages sent whole
   * (`normal-bytes`) and pages sent as zero (`duplicate`, a few bytes each on the wire but read and
   * handled on both hosts). Predictions learn the link's two rates from these. Absent: not a live
   * move, or a record older than the field.
   */
  memoryPages: z.object({ dataBytes: z.number(), zeroPages: z.number() }).nullable().optional(),
  passes: z.number(),
  rate: z.object({ transferBps: z.number(), dirtyBps: z.number() }),
  remainingBytes: z.number().nullable(),
  downtimeLimitMs: z.number().nullable(),
  throttlePct: z.number(),
  policy: PolicyInput,
  options: MoveOptions,
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
  createdAt: z.string(),
  startedAt: z.string().nullable(),
  finishedAt: z.string().nullable(),
  events: z.array(MigrationEvent),
  /** Per disk, for moves that copy storage. */
  disks: z.array(
    z.object({
      id: z.string(),
      source: z.string(),
      destination: z.string(),
      bytesDone: z.number(),
      bytesTotal: z.number(),
      /** A retry that resumed a cut copy: the bytes it sent again, of the disk's size. */
      resumed: z.object({ resentBytes: z.number(), diskBytes: z.number() }).optional(),
    }),
  ),
  /**
   * How the disks were copied: `mirror` (drive-mirror), `resumable` (backup passes with a dirty
   * bitmap), `offline` (a stopped VM's qemu-img copy); absent when no disk was copied.
   */
  diskCopy: z.enum(['mirror', 'resumable', 'offline']).optional(),
  incompatibilities: z.array(Incompatibility),
  /** Who asked for the move (certificate name and role); null for records older than the field. */
  requestedBy: z
    .object({ name: z.string(), role: z.enum(['host', 'admin']) })
    .nullable()
    .optional(),
  /** The prediction made before the move (compare-vm --predict), beside the outcome above. */
  prediction: Prediction.nullable().optional(),
  /** Each step's time, in the order they ended (absent in records older than the field). */
  steps: z.array(StepTime).max(MAX_STEP_TIMES).optional(),
  /** Set once the move switched to post-copy (--allow-postcopy): from then on there is no way back. */
  postcopy: z
    .object({
      /** When the source stopped the guest to switch (ISO time) and how long after the copy began. */
      switchedAt: z.string(),
      afterMs: z.number(),
      /** QEMU's downtime on the source: guest stopped until its device state was sent. */
      downtimeMs: z.number().nullable(),
      /** Guest stopped on the source until it ran on the destination, as the source saw it. */
      guestPauseMs: z.number().nullable(),
      /** The pages pulled after the switch (QEMU's postcopy-bytes) and how long that took. */
      bytes: z.number().nullable(),
      durationMs: z.number().nullable(),
      /** A failure after the switch: the guest is lost on both hosts (QEMU's rule). */
      lost: z.boolean(),
    })
    .nullable()
    .optional(),
});
export type MigrationRecord = z.infer<typeof MigrationRecord>;

export const ListQuery = z
  .object({
    all: z
      .enum(['true', 'false'])
      .default('false')
      .transform((v) => v === 'true'),
  })
  .strict();
export const IdParams = z.object({
  id: z.string().regex(/^[A-Za-z0-9-]{1,64}$/, { message: 'must be a migration id' }),
});
