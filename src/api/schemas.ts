// Request and response schemas of the agent's API (shared by routes, client and OpenAPI).
import { DEFAULTS, PRIORITIES } from './defaults.js';
import * as z from 'zod';
import { NAME_RE, IMAGE_FORMATS, FIRMWARES, DISPLAYS } from './common.js';
import { failbackProblem } from '../cluster/failback.js';

export const Name = z.string().regex(NAME_RE, {
  message: 'must be 1–63 letters, digits, dot, dash or underscore, starting with a letter or digit',
});
const AbsPath = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => p.startsWith('/') && !p.includes('\0'), { message: 'must be an absolute path' });

export const NameParams = z.object({ name: Name });

export const ErrorBody = z.object({
  error: z.object({ code: z.string(), message: z.string(), context: z.record(z.string(), z.unknown()).optional() }),
});

export const VM_STATES = ['running', 'paused', 'stopped', 'migrating'] as const;

export const DiskView = z.object({
  id: z.string(),
  path: z.string(),
  format: z.string(),
  virtualSizeBytes: z.number(),
  pool: z.string().nullable(),
  /** 'data', or 'uefi-vars' for the VM's UEFI variable store. */
  role: z.string().default('data'),
});

/** One checkpoint of a VM (`ferry checkpoint list`, `vm show`): files are relative to `folder`. */
export const CheckpointView = z.object({
  id: z.string(),
  name: z.string(),
  parent: z.string().nullable(),
  parentName: z.string().nullable(),
  /** Depth in the tree (0: a first checkpoint). */
  depth: z.number(),
  created: z.string(),
  /** It holds memory state (applying it resumes the VM). */
  memory: z.boolean(),
  /** The vCPUs were running when it was taken. */
  running: z.boolean(),
  /** The VM's present state derives from it. */
  current: z.boolean(),
  /** Bytes its own files take on disk. */
  sizeBytes: z.number(),
  files: z.array(z.string()),
  /** Its disk images that are the VM's own base disks (absolute paths, outside the folder). */
  baseDisks: z.array(z.string()),
  /** How long the guest was paused to take it (memory checkpoints), and how long taking it lasted. */
  pauseMs: z.number().nullable(),
  tookMs: z.number(),
});
export type CheckpointView = z.infer<typeof CheckpointView>;

export const CheckpointList = z.object({
  vm: z.string(),
  /** The folder holding the tree (checkpoints.json) and the files. */
  folder: z.string(),
  /** The checkpoint the present state derives from. */
  current: z.string().nullable(),
  /** Depth first, children by creation time. */
  checkpoints: z.array(CheckpointView),
});
export type CheckpointList = z.infer<typeof CheckpointList>;

/** A checkpoint name is checked by the agent, which says what a valid one is. */
export const CheckpointNewBody = z.object({ name: z.string().min(1).max(200) }).strict();
export const CheckpointParams = z.object({ name: Name, checkpoint: z.string().min(1).max(200) });
export const CheckpointApplyBody = z.object({ discard: z.boolean().default(false) }).strict();
export const VmView = z.object({
  name: z.string(),
  id: z.string(),
  host: z.string(),
  state: z.enum(VM_STATES),
  qemuState: z.string().nullable(),
  pid: z.number().nullable(),
  memoryMiB: z.number(),
  cpus: z.number(),
  cpuModel: z.string(),
  machine: z.string(),
  guest: z.string(),
  configPath: z.string(),
  checkpointPath: z.string(),
  pagingPath: z.string(),
  disks: z.array(DiskView),
  firmware: z.enum(FIRMWARES).default('bios'),
  /** Device ids in boot order (empty: the firmware's default). */
  bootOrder: z.array(z.string()).default([]),
  cdroms: z
    .array(z.object({ id: z.string(), path: z.string(), role: z.string(), pool: z.string().nullable() }))
    .default([]),
  display: z.enum(DISPLAYS).default('none'),
  nics: z.array(z.object({ id: z.string(), switch: z.string(), mac: z.string() })),
  switches: z.array(z.string()),
  ha: z.boolean(),
  /** May its RAM be backed by a file in its paging folder on a host without room (Smart Paging)? */
  smartPaging: z.boolean().default(false),
  /** Where its RAM is now: ordinary memory, or the paging file (Smart Paging); null while stopped. */
  memoryBacking: z.enum(['ram', 'paging-file']).nullable().default(null),
  /** The paging file while memoryBacking is 'paging-file'. */
  pagingFile: z.string().nullable().default(null),
  /** Its checkpoints, depth first (`ferry checkpoint list`). */
  checkpoints: z.array(CheckpointView).default([]),
  /** Its last arrival here by a live move, and what the guest did by itself within a minute of it. */
  arrival: z
    .object({
      from: z.string(),
      migration: z.string(),
      arrivedAt: z.string(),
      trouble: z
        .object({ what: z.enum(['reset', 'panic', 'shutdown']), reason: z.string(), afterMs: z.number() })
        .nullable(),
      message: z.string(),
    })
    .nullable()
    .default(null),
});
export type VmView = z.infer<typeof VmView>;

export const CheckpointApplied = z.object({
  checkpoint: z.string(),
  /** The checkpoint that keeps the state the VM left (null with discard). */
  branch: z.string().nullable(),
  running: z.boolean(),
  vm: VmView,
});

export const DiskRequest = z
  .object({
    /** New empty disk of this size… */
    sizeBytes: z
      .number()
      .int()
      .min(512)
      .max(64 * 2 ** 40, { message: 'must be at most 64 TiB' })
      .multipleOf(512, { message: 'must be a multiple of 512 bytes' })
      .optional(),
    format: z.enum(IMAGE_FORMATS).optional(),
    /** …placed in this pool (else the VM folder)… */
    pool: Name.optional(),
    /** …or an existing image attached as it is. */
    attach: AbsPath.optional(),
  })
  .strict()
  .refine((d) => (d.sizeBytes === undefined) !== (d.attach === undefined), {
    message: 'needs either a size (new disk) or attach (existing image), not both',
  });
export type DiskRequest = z.infer<typeof DiskRequest>;

export const VmCreateBody = z
  .object({
    name: Name,
    memoryMiB: z
      .number()
      .int()
      .min(16, { message: 'must be at least 16 MiB' })
      .max(1024 * 1024)
      .default(256),
    cpus: z.number().int().min(1).max(255).default(1),
    cpu: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/)
      .optional(),
    /** The VM's folder; default: the host's local pool, folder named after the VM. */
    path: AbsPath.optional(),
    disks: z.array(DiskRequest).max(16).default([]),
    guest: z.enum(['probe', 'bootblock', 'custom']).default('custom'),
    kernel: AbsPath.optional(),
    initrd: AbsPath.optional(),
    append: z.string().max(4096).optional(),
    /** A disk image (any format qemu-img reads, in a pool) copied into the VM's folder as its first disk. */
    image: AbsPath.optional(),
    /** Grow the copy of `image` to this virtual size. */
    diskSizeBytes: z
      .number()
      .int()
      .min(512)
      .max(64 * 2 ** 40, { message: 'must be at most 64 TiB' })
      .multipleOf(512, { message: 'must be a multiple of 512 bytes' })
      .optional(),
    /** Format of the copy of `image` (default qcow2). */
    diskFormat: z.enum(IMAGE_FORMATS).optional(),
    /** ISO images (in pools, used in place) as CD-ROMs, in this order. */
    cdroms: z.array(AbsPath).max(3).default([]),
    firmware: z.enum(FIRMWARES).optional(),
    /** 'pc' or 'q35' (this host's newest version of it), or a versioned machine type. */
    machine: z
      .string()
      .regex(/^(pc|q35|pc-i440fx-\d+\.\d+|pc-q35-\d+\.\d+)$/, {
        message: "must be 'pc', 'q35' or a versioned machine type such as 'pc-q35-7.2'",
      })
      .optional(),
    /** cloud-init NoCloud seed, made in the VM's folder and attached as a CD-ROM. */
    cloudInit: z
      .object({
        userData: z.string().max(1024 * 1024),
        networkConfig: z
          .string()
          .max(1024 * 1024)
          .optional(),
        metaData: z
          .string()
          .max(1024 * 1024)
          .optional(),
      })
      .strict()
      .optional(),
    /** Boot order: 'disk' (the first disk), 'cdrom' (the CD-ROMs), 'net' (the NICs), or device ids. */
    boot: z
      .array(z.string().regex(/^[a-z][a-z0-9]{0,15}$/, { message: "must be 'disk', 'cdrom', 'net' or a device id" }))
      .min(1)
      .max(16)
      .optional(),
    /** 'vga' (default for VMs that boot from disk or CD): a screen over VNC; 'none': serial only. */
    display: z.enum(DISPLAYS).optional(),
    switches: z.array(Name).max(8).default([]),
    ha: z.boolean().default(false),
    smartPaging: z.boolean().default(false),
    /** How the cluster treats it (with ha). */
    cluster: z
      .object({
        priority: z.enum(PRIORITIES).default(DEFAULTS.priority),
        preferredOwners: z.array(Name).max(16).default([]),
        antiAffinity: z.array(Name).max(8).default([]),
      })
      .strict()
      .optional(),
    start: z.boolean().default(false),
    probe: z
      .object({
        dirty: z
          .object({
            mib: z
              .number()
              .int()
              .min(1)
              .max(1 << 20),
            mibps: z
              .number()
              .int()
              .min(1)
              .max(1 << 20)
              .optional(),
          })
          .strict()
          .optional(),
        noWriter: z.boolean().optional(),
        writerIntervalMs: z.number().int().min(0).max(60_000).optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .refine(
    (b) =>
      (b.guest === 'custom' && !b.kernel) ||
      (b.image ?? b.firmware ?? b.machine ?? b.cloudInit ?? b.boot ?? b.display) === undefined,
    {
      message:
        'image, firmware, machine, cloudInit, boot and display apply to VMs that boot from their disks; ' +
        'drop them, or drop guest and kernel',
    },
  )
  .refine((b) => (b.guest === 'custom' && !b.kernel ? true : b.cdroms.length === 0), {
    message: 'cdroms apply to VMs that boot from their disks; drop them, or drop guest and kernel',
  });

export type VmCreateBody = z.infer<typeof VmCreateBody>;

// ---- vm.import: a libvirt domain, parsed by the CLI (src/vm/import-libvirt.ts) ----

/** What the agent receives: the parsed plan (the agent never parses XML). */
export const ImportPlan = z
  .object({
    name: z.string().min(1).max(200),
    uuid: z.string().max(64).optional(),
    memoryMiB: z
      .number()
      .int()
      .min(16)
      .max(1024 * 1024),
    cpus: z.number().int().min(1).max(255),
    /** A QEMU CPU model name, or undefined for Ferry's default. */
    cpuModel: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/)
      .optional(),
    /** 'pc', 'q35' or a versioned type as the domain named it. */
    machine: z.string().regex(/^(pc|q35|pc-i440fx-\d+\.\d+|pc-q35-\d+\.\d+)$/),
    firmware: z.enum(['bios', 'uefi']),
    /** The domain's UEFI variable store, copied into the VM's folder when it fits Ferry's OVMF. */
    nvram: z.string().max(4096).optional(),
    disks: z
      .array(
        z
          .object({
            target: z.string().max(32),
            path: z.string().min(1).max(4096),
            /** The format the XML says (checked against the image itself). */
            format: z.string().max(32),
            bus: z.enum(['virtio', 'ide']),
            readOnly: z.boolean(),
          })
          .strict(),
      )
      .max(16),
    cdroms: z.array(z.object({ target: z.string().max(32), path: z.string().min(1).max(4096) }).strict()).max(3),
    nics: z
      .array(
        z
          .object({
            kind: z.enum(['bridge', 'network', 'user']),
            /** The Linux bridge, or the libvirt network's name. */
            source: z.string().max(64).optional(),
            mac: z.string().max(32).optional(),
          })
          .strict(),
      )
      .max(8),
    /** 'disk', 'cdrom', 'net' or a target (vda, sda) in boot order. */
    boot: z.array(z.string().max(32)).max(16),
    display: z.enum(['vga', 'none']),
    /** Everything in the XML Ferry does not carry over, one line each. */
    unmapped: z.array(z.string().max(500)).max(200),
  })
  .strict();
export type ImportPlan = z.infer<typeof ImportPlan>;

export const VmImportBody = z
  .object({
    plan: ImportPlan,
    /** The VM's name (default: the domain's). */
    name: Name.optional(),
    /** The VM's folder (default: the host's local pool, folder named after the VM). */
    path: AbsPath.optional(),
    /** Copy the disks into the VM's folder (as qcow2) instead of using them in place. */
    copy: z.boolean().default(false),
  })
  .strict();
export type VmImportBody = z.infer<typeof VmImportBody>;

/** `ferry vm set`: the CPU model of a stopped VM (a QEMU model name, or 'host'). */
export const VmSetBody = z
  .object({
    cpu: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/, { message: 'must be a CPU model name' })
      .optional(),
    smartPaging: z.boolean().optional(),
  })
  .strict();
export const VmStopBody = z
  .object({ force: z.boolean().default(false), timeoutMs: z.number().int().min(0).max(600_000).default(30_000) })
  .strict();
export const VmRemoveQuery = z
  .object({
    deleteDisks: z
      .enum(['true', 'false'])
      .default('true')
      .transform((v) => v === 'true'),
    /** Also delete images the VM did not make (attached, imported in place). */
    deleteExternal: z
      .enum(['true', 'false'])
      .default('false')
      .transform((v) => v === 'true'),
  })
  .strict();
export const ConsoleQuery = z
  .object({
    follow: z
      .enum(['true', 'false'])
      .default('false')
      .transform((v) => v === 'true'),
    /** Only the last N bytes of the log (default 64 KiB). */
    tail: z.coerce
      .number()
      .int()
      .min(0)
      .max(64 * 1024 * 1024)
      .default(65536),
  })
  .strict();

export const SwitchView = z.object({
  name: z.string(),
  kind: z.enum(['user', 'bridge']),
  bridge: z.string().nullable(),
});
export type SwitchView = z.infer<typeof SwitchView>;
export const SwitchCreateBody = z
  .object({
    name: Name,
    kind: z.enum(['user', 'bridge']),
    bridge: z
      .string()
      .regex(/^[A-Za-z0-9_.-]{1,15}$/, { message: 'must be a Linux interface name (at most 15 characters)' })
      .optional(),
  })
  .strict()
  .refine((s) => (s.kind === 'bridge') === (s.bridge !== undefined), {
    message: "a bridge switch needs 'bridge' (the Linux bridge), a user switch must not have one",
  });

export const PoolView = z.object({
  name: z.string(),
  kind: z.enum(['local', 'shared']),
  path: z.string(),
  totalBytes: z.number(),
  freeBytes: z.number(),
  granted: z.array(z.string()),
  usable: z.boolean(),
});
export type PoolView = z.infer<typeof PoolView>;
export const PoolBrowseQuery = z.object({ path: z.string().max(4096).default('') }).strict();
export const PoolBrowseView = z.object({
  pool: z.string(),
  root: z.string(),
  path: z.string(),
  absolute: z.string(),
  entries: z.array(z.object({ name: z.string(), kind: z.enum(['dir', 'file']), sizeBytes: z.number() })),
});
export const PoolAddBody = z.object({ name: Name, kind: z.enum(['local', 'shared']), path: AbsPath }).strict();
export const PoolGrantBody = z.object({ host: Name }).strict();

export const MigrationSettings = z.object({
  enabled: z.boolean(),
  maxLive: z.number().int(),
  maxStorage: z.number().int(),
  networks: z.array(z.string()),
  tls: z.boolean(),
  /**
   * With TLS, a move's memory goes over this many parallel streams (QEMU's multifd; 1: one
   * stream, the default). Absent: 1 (an agent from before it).
   */
  memoryStreams: z.number().int().min(1).optional(),
  address: z.string(),
  /** The migration port range its streams and NBD exports listen on (FROM-TO); null: any free port. */
  ports: z.string().nullable().optional(),
});
export type MigrationSettings = z.infer<typeof MigrationSettings>;

const Cidr = z
  .string()
  .regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/, { message: 'must be an IPv4 CIDR such as 10.0.0.0/24' })
  .refine(
    (c) => {
      const [ip, bits] = c.split('/');
      return ip !== undefined && ip.split('.').every((o) => Number(o) <= 255) && Number(bits) <= 32;
    },
    { message: 'must be a valid IPv4 CIDR' },
  );

export const HostSetBody = z
  .object({
    maxLive: z.number().int().min(0).max(64).optional(),
    maxStorage: z.number().int().min(0).max(64).optional(),
    migrationNetworks: z.array(Cidr).max(16).optional(),
    tls: z.boolean().optional(),
    memoryStreams: z.number().int().min(1).max(8).optional(),
    enabled: z.boolean().optional(),
    /** The total memory of the VMs this host runs in ordinary RAM; null: no limit. */
    maxVmMemoryMiB: z
      .number()
      .int()
      .min(0)
      .max(1024 * 1024 * 1024)
      .nullable()
      .optional(),
  })
  .strict();

/** The host's own certificate, as `ferry host show` prints it. */
export const CertificateView = z.object({
  serial: z.string(),
  notBefore: z.string(),
  notAfter: z.string(),
  /** When the agent makes its renewal request (2/3 of the lifetime). */
  renewAt: z.string(),
  renewalPending: z.boolean(),
});
export type CertificateView = z.infer<typeof CertificateView>;

/** The agent's TLS state for the admin: certificate, CRL, a pending renewal request. */
export const TlsView = z.object({
  certificate: CertificateView,
  caFingerprint: z.string(),
  crl: z
    .object({ number: z.string(), lastUpdate: z.string(), nextUpdate: z.string().nullable(), revoked: z.number() })
    .nullable(),
  renewal: z.object({ csr: z.string(), createdAt: z.string() }).nullable(),
});
export type TlsView = z.infer<typeof TlsView>;
export const RenewalBody = z.object({ force: z.boolean().default(false) }).strict();
/** A PEM document (CRL, certificate bundle) sent as application/x-pem-file. */
export const PemBody = z
  .string()
  .min(1)
  .max(1024 * 1024);

export const HostView = z.object({
  name: z.string(),
  domainId: z.string(),
  agentVersion: z.string(),
  cpu: z.object({ vendor: z.string(), model: z.string(), flags: z.array(z.string()), count: z.number() }),
  accelerator: z.object({ name: z.enum(['kvm', 'tcg']), reason: z.string() }),
  qemu: z.object({ version: z.string(), machineTypes: z.array(z.string()) }),
  memory: z.object({
    totalBytes: z.number(),
    /** Free for VMs: MemAvailable, capped by what running VMs may still touch and by maxVmBytes. */
    freeBytes: z.number(),
    /** Memory of the VMs running in ordinary RAM here. */
    vmBytes: z.number(),
    /** `ferry host set --max-vm-memory` (null: no limit). */
    maxVmBytes: z.number().nullable().optional(),
    /** Memory of the VMs running here from a paging file (Smart Paging). */
    pagingBytes: z.number().optional(),
  }),
  pools: z.array(PoolView),
  switches: z.array(SwitchView),
  migration: MigrationSettings,
  vms: z.number(),
  certificate: CertificateView.optional(),
});
export type HostView = z.infer<typeof HostView>;

export const EventView = z
  .object({ seq: z.number(), at: z.string(), type: z.string(), vm: z.string().optional() })
  .loose();
export type EventView = z.infer<typeof EventView>;

export const Ok = z.object({ ok: z.literal(true) });

const Prio = z.enum(PRIORITIES);
export const PauseView = z.object({ reason: z.enum(['drain', 'admin']), at: z.string() });
export const NodeView = z.object({
  name: z.string(),
  endpoint: z.string(),
  state: z.enum(['up', 'paused', 'down']),
  since: z.string().nullable(),
  /** Paused (a node that is down can be paused too): by a drain or by 'ferry cluster pause'. */
  paused: PauseView.nullable(),
});
export type NodeView = z.infer<typeof NodeView>;
export const BatchView = z.object({
  node: z.string(),
  kind: z.enum(['drain', 'failback']),
  state: z.enum(['running', 'completed', 'failed', 'aborted']),
  startedAt: z.string(),
  finishedAt: z.string().nullable(),
  items: z.array(
    z.object({
      vm: z.string(),
      from: z.string(),
      priority: Prio,
      to: z.string().nullable(),
      state: z.enum(['pending', 'moving', 'moved', 'failed', 'blocked', 'cancelled']),
      migrationId: z.string().nullable(),
      attempts: z.number(),
      reason: z.string().nullable(),
    }),
  ),
  /** Adaptive concurrency: each change of how many of its moves run at once, and why. */
  concurrency: z
    .array(z.object({ at: z.string(), node: z.string(), level: z.number(), reason: z.string() }))
    .max(64)
    .optional(),
});
export type BatchView = z.infer<typeof BatchView>;
export const ClusterView = z.object({
  name: z.string(),
  leader: z.string().nullable(),
  nodes: z.array(NodeView),
  /** Clustered (HA) VMs and their owner. */
  vms: z.array(
    z.object({
      name: z.string(),
      owner: z.string(),
      generation: z.number(),
      memoryMiB: z.number(),
      priority: Prio,
      preferredOwners: z.array(z.string()),
      antiAffinity: z.array(z.string()),
      /** Automatic fail-back: 'immediately', 'never' or 'HH:MM-HH:MM' (the leader's local time). */
      failback: z.string(),
      /** The preferred owner it had to leave and fails back to when that node returns, or null. */
      away: z.string().nullable(),
      /** An HA restart its owner has not confirmed yet: the node it was restarted from, else null. */
      restartFrom: z.string().nullable().optional(),
    }),
  ),
  /** The cluster-wide migration queue: admitted moves hold a slot, queued ones wait in position order. */
  queue: z.array(
    z.object({
      id: z.string(),
      vm: z.string(),
      from: z.string(),
      to: z.string(),
      priority: Prio,
      state: z.enum(['queued', 'admitted']),
      position: z.number().nullable(),
      batch: z.string().nullable(),
    }),
  ),
  limits: z.object({ maxOutgoing: z.number(), maxIncoming: z.number(), maxTotal: z.number(), adaptive: z.boolean() }),
  /** The last drain or fail-back of each node. */
  batches: z.array(BatchView),
});
export type ClusterView = z.infer<typeof ClusterView>;

export const DrainBody = z.object({ dryRun: z.boolean().default(false) }).strict();
export const DrainPlanView = z.object({
  node: z.string(),
  movable: z.number(),
  blocked: z.number(),
  items: z.array(
    z.object({
      vm: z.string(),
      state: z.enum(VM_STATES),
      memoryMiB: z.number(),
      priority: Prio,
      clustered: z.boolean(),
      to: z.string().nullable(),
      kind: z.enum(['live', 'offline']).nullable(),
      blockers: z.array(z.object({ code: z.string(), message: z.string() })),
      warnings: z.array(z.string()),
    }),
  ),
});
export const DrainResult = z.object({ plan: DrainPlanView, batch: BatchView.nullable() });
/** `ferry cluster pause NODE`: the node's pause as it is now; changed: false when it was paused already. */
export const PauseResult = z.object({ node: z.string(), changed: z.boolean() }).extend(PauseView.shape);
export const ResumeBody = z.object({ failback: z.boolean().default(false) }).strict();
export const ClusterPolicyBody = z
  .object({
    priority: Prio.optional(),
    preferredOwners: z.array(Name).max(16).optional(),
    antiAffinity: z.array(Name).max(8).optional(),
    /** Automatic fail-back to the first preferred owner: 'immediately', 'never' or 'HH:MM-HH:MM'. */
    failback: z
      .string()
      .superRefine((v, c) => {
        const bad = failbackProblem(v);
        if (bad) c.addIssue({ code: 'custom', message: bad });
      })
      .optional(),
  })
  .strict();
export const AddVmBody = z.object({ vm: Name }).extend(ClusterPolicyBody.shape).strict();
export const LimitsBody = z
  .object({
    maxOutgoing: z.number().int().min(1).max(64).optional(),
    maxIncoming: z.number().int().min(1).max(64).optional(),
    maxTotal: z.number().int().min(1).max(1024).optional(),
    adaptive: z.boolean().optional(),
  })
  .strict()
  .refine((b) => Object.keys(b).length > 0, {
    message: 'needs at least one of maxOutgoing, maxIncoming, maxTotal, adaptive',
  });
export const ClusterJoinBody = z
  .object({
    name: Name,
    /** True: a new cluster (refused if it has members); false: join an existing one. */
    create: z.boolean().default(false),
    endpoints: z
      .array(z.url().refine((u) => u.startsWith('https://'), { message: 'must be an https:// etcd client URL' }))
      .min(1)
      .max(9),
  })
  .strict();

/** One line of an agent's audit trail (src/agent/audit.ts). */
export const AuditEntry = z.object({
  time: z.iso.datetime(),
  /** This request's id (also in the agent log and the response's x-request-id header). */
  requestId: z.string().max(100),
  /** The agent that executed (or refused) the request. */
  host: z.string().max(255),
  /** A certificate's name (a person's or a host's), or the console user. */
  who: z.string().max(255),
  /** admin or host (certificates); viewer, operator or admin (console users). */
  role: z.string().max(32),
  via: z.enum(['certificate', 'console']),
  /** role:name of the certificate that made the connection. */
  certificate: z.string().max(300),
  /** The action's name (vm.start, peer.ha-start…), or null for a path that is no action. */
  action: z.string().max(100).nullable(),
  method: z.string().max(10),
  path: z.string().max(1000),
  /** vm:NAME, move:ID, node:NAME, pool:NAME… */
  target: z.string().max(300).nullable(),
  outcome: z.enum(['ok', 'refused', 'failed']),
  status: z.number().int(),
  /** The error code of a refusal or failure. */
  code: z.string().max(100).nullable(),
  ms: z.number().min(0),
});
export type AuditEntry = z.infer<typeof AuditEntry>;
export const AuditQuery = z
  .object({
    since: z.iso.datetime().optional(),
    who: z.string().min(1).max(255).optional(),
    limit: z.coerce.number().int().min(1).max(10_000).default(1000),
  })
  .strict();
export type AuditQuery = z.infer<typeof AuditQuery>;
export const AuditView = z.object({
  host: z.string(),
  entries: z.array(AuditEntry),
  /** Lines that are not entries (cut by a crash, edited by hand). */
  skipped: z.number().int(),
});
