// Every error code Ferry returns, with what it means for a caller: the HTTP status the agent
// answers, the CLI's exit code (shared/CLI.md), whether retrying the same request may succeed,
// and one line of meaning. Server, client, CLI and web console read this one table (it has no
// Node imports: the web app bundles it).

/** The CLI's exit codes (shared/CLI.md). */
export const EXIT = { ok: 0, failed: 1, usage: 2, incompatible: 3, notFound: 4, cancelled: 5 } as const;
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export interface ErrorInfo {
  status: number;
  exit: ExitCode;
  retryable: boolean;
  meaning: string;
}

const input = (meaning: string): ErrorInfo => ({ status: 400, exit: EXIT.usage, retryable: false, meaning });
const notFound = (meaning: string): ErrorInfo => ({ status: 404, exit: EXIT.notFound, retryable: false, meaning });
const conflict = (meaning: string, retryable = false): ErrorInfo => ({
  status: 409,
  exit: EXIT.failed,
  retryable,
  meaning,
});
/**
 * An incompatibility found by compare-vm. Thrown on its own (e.g. by the destination) it is a
 * plain failure; the CLI exits 3 for E_INCOMPATIBLE, the refused move's report.
 */
const incompatible = (meaning: string): ErrorInfo => ({
  status: 409,
  exit: EXIT.failed,
  retryable: false,
  meaning,
});
const unavailable = (meaning: string): ErrorInfo => ({ status: 503, exit: EXIT.failed, retryable: true, meaning });
const failed = (meaning: string, retryable = false): ErrorInfo => ({
  status: 500,
  exit: EXIT.failed,
  retryable,
  meaning,
});
const cancelled = (meaning: string): ErrorInfo => ({ status: 409, exit: EXIT.cancelled, retryable: false, meaning });

export const ERROR_CODES = {
  // Requests and identity
  E_INVALID_INPUT: input('a flag, field or body is malformed; nothing was changed'),
  E_USAGE: input('the command was used wrongly; nothing was changed'),
  E_UNAUTHENTICATED: { status: 401, exit: EXIT.failed, retryable: false, meaning: 'no valid credential was presented' },
  E_FORBIDDEN: { status: 403, exit: EXIT.failed, retryable: false, meaning: 'the caller may not do this' },
  E_ROUTE_NOT_FOUND: notFound('no such API route'),
  E_HTTP: failed('an HTTP call failed without a Ferry error'),
  E_BAD_RESPONSE: failed('a peer answered with something that is not the API'),
  E_INTERNAL: failed('a bug: the agent log has the details'),
  E_TIMEOUT: { status: 504, exit: EXIT.failed, retryable: true, meaning: 'something did not answer in time' },
  E_ABORTED: cancelled('the operation was cancelled'),
  E_CANCELLED: cancelled('the move was cancelled; the VM stayed where it was'),
  E_TOO_MANY: {
    status: 429,
    exit: EXIT.failed,
    retryable: true,
    meaning: 'the caller holds too many of something; close some',
  },
  E_UNSUPPORTED: { status: 422, exit: EXIT.failed, retryable: false, meaning: 'not supported on this host' },

  // Local set-up
  E_TLS_MISSING: input('the TLS files of this host or admin are missing or not from a Ferry domain'),
  E_DATA_PATH_TOO_LONG: input("the agent's data folder is too long for QEMU's control sockets"),
  E_CONTEXT_NOT_FOUND: notFound('no context file (endpoints and credentials) was found'),
  E_DOMAIN_EXISTS: conflict('a domain already exists in that folder'),
  E_DOMAIN_NOT_FOUND: notFound('no domain (CA) in that folder'),
  E_WEB_NOT_BUILT: input('the web console is not built'),
  E_GUEST_NOT_BUILT: input('a test guest is not built'),
  E_COMMAND_FAILED: failed('a helper program failed'),
  E_IMAGE_BUILD: failed('a guest image could not be built'),
  E_FIRMWARE_MISSING: input('the UEFI firmware (OVMF) is not installed'),
  E_FIRMWARE_VARS: conflict("a VM's UEFI variable store cannot be made"),
  E_SEED_FAILED: failed('the cloud-init seed image could not be made'),
  E_FILE_NOT_FOUND: notFound('a file does not exist'),
  E_IMAGE_UNREADABLE: input('a disk image cannot be read by qemu-img'),
  E_CHAIN_TOO_LONG: conflict(
    "a stopped VM's checkpoint chain is too long to rebase with qemu-img; remove it while the VM runs",
  ),
  E_IMAGE_HEADER: failed('qemu-img copied the data but could not write the backing name; the message says the command'),
  E_IMPORT: input('a libvirt domain cannot be imported as it is'),
  E_PATH_NOT_FOUND: notFound('a folder does not exist'),
  E_PATH_LINK: input('a path inside a pool is, or passes through, a symbolic link'),
  E_PATH_SWAPPED: conflict('a disk image was replaced while QEMU opened it; QEMU was stopped before the guest ran'),
  E_LAB_EXISTS: conflict('a lab already runs in that folder'),
  E_LAB_NOT_FOUND: notFound('no lab in that folder'),
  E_LAB_NETWORK: input('the lab network cannot be set up'),
  E_LAB_STATE: failed("the lab's file does not match what runs"),
  E_PACKAGE: input('the .deb given to the lab is not a usable Ferry package'),
  E_ENROL: failed('a packaged lab host could not be enrolled'),
  E_AGENT_START: failed('an agent did not start'),
  E_CONSOLE_UNREACHABLE: unavailable('the web console does not answer'),

  // Hosts, agents, pools, switches
  E_HOST_NOT_FOUND: notFound('no such host in the context'),
  E_AGENT_UNREACHABLE: unavailable("a host's agent does not answer"),
  E_HOST_BUSY: conflict('the host is at its migration limit; the move stays queued', true),
  E_POOL_EXISTS: conflict('a pool with that name exists'),
  E_POOL_NOT_FOUND: notFound('no such storage pool'),
  E_POOL_NOT_GRANTED: {
    status: 403,
    exit: EXIT.failed,
    retryable: false,
    meaning: 'the host may not use that pool',
  },
  E_POOL_UNAVAILABLE: incompatible('a pool is not mounted or not readable'),
  E_SWITCH_EXISTS: conflict('a switch with that name exists'),
  E_SWITCH_NOT_FOUND: notFound('no such switch'),
  E_SWITCH_IN_USE: conflict('a VM is connected to the switch'),
  E_BRIDGE_NOT_FOUND: notFound('no such Linux bridge'),
  E_TAP: failed('a tap device could not be made'),
  E_MIGRATION_NETWORK: input('no address of this host is in its migration networks'),
  E_MIGRATION_DISABLED: incompatible('migrations are disabled on the host'),

  // VMs
  E_VM_NOT_FOUND: notFound('no such VM on the host'),
  E_VM_EXISTS: conflict('a VM with that name exists'),
  E_VM_RUNNING: conflict('the VM runs; stop it first'),
  E_VM_NOT_RUNNING: conflict('the VM is not running'),
  E_VM_BUSY: conflict('another operation (a move) holds the VM', true),
  E_VM_CONFIG_CORRUPT: failed("the VM's vm.json cannot be read"),
  E_CHECKPOINT_EXISTS: conflict('the VM has a checkpoint with that name'),
  E_CHECKPOINT_NOT_FOUND: notFound('the VM has no such checkpoint'),
  E_CHECKPOINT_BRANCHES: conflict('the first checkpoint has several states built on it; remove all but one first'),
  E_CHECKPOINT_CORRUPT: failed("the VM's checkpoint tree (checkpoints.json) cannot be read"),
  E_CHECKPOINT_MEMORY: failed('the memory state of a checkpoint could not be saved or loaded'),
  E_DISK_NOT_FOUND: notFound('a disk image of the VM is missing'),
  E_QEMU_START: failed('QEMU did not start'),
  E_QEMU_GONE: failed('the QEMU process is gone'),
  E_STORAGE_DAEMON: failed(
    "the disk daemon (QEMU without a guest) could not open a stopped VM's disks for a resumable copy",
  ),
  E_QEMU_SANDBOX: failed("this host's QEMU cannot run with its seccomp sandbox on"),
  E_QEMU_USER: failed('the user QEMU runs as does not exist or cannot reach a file of the VM'),
  E_QMP: failed('QEMU refused a QMP command'),
  E_QMP_CLOSED: failed("QEMU's monitor closed"),
  E_QMP_CONNECT: failed("QEMU's monitor cannot be reached"),
  E_BLOCK: failed('a block device of the VM cannot be found in QEMU'),
  E_CPU_MODELS: failed("QEMU's CPU models cannot be read"),
  E_DATA_LOST: failed('an acknowledged record is missing from a disk'),
  E_NO_DISPLAY: conflict('the VM has no screen (it was made without a display)'),
  E_CONSOLE_BUSY: conflict("someone else is attached to the VM's serial console", true),

  // Compare-VM: reasons a VM cannot move to a host
  E_INCOMPATIBLE: { ...incompatible('the VM cannot move there; the report lists why'), exit: EXIT.incompatible },
  E_CPU_VENDOR: incompatible('the CPU vendors differ'),
  E_CPU_FEATURES: incompatible("the destination's CPU lacks features the VM uses"),
  E_ACCELERATOR: incompatible('the accelerators (KVM, TCG) differ'),
  E_SWITCH_MISSING: incompatible('a switch the VM uses does not exist there'),
  E_MEMORY: incompatible('not enough free memory there'),
  E_VM_MEMORY: conflict(
    'the host lacks memory for the VM (free memory or --max-vm-memory) and it does not allow Smart Paging',
  ),
  E_STORAGE_NOT_SHARED: incompatible('a file of the VM is not on storage the destination sees'),
  E_DOMAIN: incompatible('the destination is not in this domain'),
  E_NAME_EXISTS: incompatible('a VM with that name is already there'),
  E_ID_EXISTS: incompatible('a VM with that id is already there'),
  E_MACHINE_TYPE: incompatible('the machine type is not available there'),
  E_PASSTHROUGH_DISK: incompatible('the VM uses a host device'),
  E_SAME_HOST: incompatible('source and destination are the same host'),
  E_FORMAT_NOT_MIGRATABLE: incompatible('QEMU cannot live-migrate a disk in that format'),
  E_NODE_PAUSED: incompatible('the cluster node is paused and takes no VMs'),
  E_DEST_UNREACHABLE: incompatible("the destination's agent does not answer"),
  E_DEST_PATH: incompatible('a destination path is taken or not allowed'),
  E_DEST_SPACE: incompatible('the destination pool has not enough free space'),
  E_COMPARE_FAILED: failed('the compatibility check itself failed'),

  // Moves
  E_MIGRATION_NOT_FOUND: notFound('no such migration on the host'),
  E_MIGRATION_DONE: conflict('the migration has ended'),
  E_CANNOT_CANCEL: conflict('the move is past the point where it can be cancelled'),
  E_MIGRATION_FAILED: failed('the move failed; the VM stays on the source', true),
  E_MIGRATION_STALLED: failed('no data moved for too long; the VM stays on the source', true),
  E_MIGRATION_URI: failed(
    'the destination answered a stream or disk address the source does not expect; the VM stays on the source',
  ),
  E_POSTCOPY_LOST: failed(
    "the move failed after it switched to post-copy: the guest is lost on both hosts (QEMU's rule); " +
      'restart the VM from its disks',
  ),
  E_POSTCOPY_UNSUPPORTED: failed('the destination QEMU cannot do post-copy (userfaultfd); the VM stays on the source'),
  E_NOT_CONVERGING: failed('the guest dirties memory faster than the link carries; the VM stays on the source'),
  E_MIRROR_FAILED: failed('a disk copy failed; the VM stays on the source', true),
  E_MIRROR_LEFTOVER: failed("an earlier move's disk copy is still being torn down; the VM stays on the source", true),
  E_COPY_FAILED: failed('a stopped disk copy failed', true),
  E_PREPARE: failed('the destination could not prepare to receive the VM', true),
  E_SWITCHOVER: failed('the switch-over did not finish as planned; the record says where the VM runs'),
  E_INCOMING_NOT_FOUND: notFound('the destination has no such incoming move'),
  E_INCOMING_FAILED: failed('the incoming side of a move failed', true),
  E_INCOMING_RUNNING: conflict('the incoming VM already runs on the destination'),
  E_AGENT_RESTARTED: failed('an agent restarted during the move, which was rolled back', true),
  E_RECOVERY: failed('a move interrupted by an agent restart could not be recovered cleanly'),

  // Cluster
  E_FENCE: failed("the host's fence process could not be started or replaced"),
  E_CLUSTER_NOT_FOUND: notFound('the host is not in a cluster, or no such cluster'),
  E_CLUSTER_EXISTS: conflict('the host or name already belongs to a cluster'),
  E_CLUSTER_JOINING: unavailable('the host is still joining its cluster'),
  E_CLUSTER_UNAVAILABLE: unavailable("the cluster's etcd does not answer"),
  E_CLUSTER_BUSY: conflict('another cluster operation runs on that node', true),
  E_CLUSTER_QUEUE: failed('the cluster queue refused the move', true),
  E_CLUSTER_NOT_ELIGIBLE: {
    status: 403,
    exit: EXIT.failed,
    retryable: false,
    meaning: 'this node may not make cluster decisions (the administrator did not let it lead)',
  },
  E_CLUSTER_BAD_VALUE: failed('a value in etcd is not valid (written by a broken or hostile node)'),
  E_NOT_CLUSTERED: conflict('the VM is not clustered'),
  E_HA_OWNED_ELSEWHERE: conflict("the cluster's record gives the HA VM to another node"),
  E_NODE_NOT_FOUND: notFound('no such cluster node'),
  E_NODE_DOWN: conflict('the cluster node is down'),
  E_DRAIN_RUNNING: conflict('a drain already runs on that node'),
  E_BATCH_GONE: notFound('the drain or fail-back record is gone'),
  E_NO_FIT: conflict('no node can take the VM'),
  E_NO_NODE: conflict('no other node is up'),
  E_STORE_CLOSED: failed('the etcd client was closed'),
  E_STORE_DENIED: { status: 403, exit: EXIT.failed, retryable: false, meaning: 'etcd refused the request' },
  E_STORE_FAILED: failed('an etcd request failed', true),
  E_STORE_LEADERSHIP_LOST: conflict('this agent is no longer the cluster leader', true),
  E_STORE_LEASE_LOST: failed("this node's etcd lease was lost", true),
  E_STORE_TIMEOUT: { status: 504, exit: EXIT.failed, retryable: true, meaning: 'etcd did not answer in time' },
  E_STORE_TLS: input("etcd's TLS files are missing or wrong"),
  E_STORE_UNAVAILABLE: unavailable('etcd has no quorum or does not answer'),
  E_ETCD_MISSING: input('etcd is not installed'),
  E_ETCD_START: failed('an etcd member did not start'),
  E_ETCD_KILL: failed('an etcd member could not be stopped'),
  E_ETCD_MEMBERSHIP: failed('etcd membership could not be changed'),
  E_ETCD_STATE: failed("an etcd member's state file is wrong"),
  // Domain enrolment (docs/enrolment.md)
  E_DOMAIN_STATE: failed('a domain file is not valid; restore it from a backup'),
  E_DOMAIN_BUSY: conflict('another ferry command holds the domain lock', true),
  E_CONTEXT_EXISTS: conflict('the CLI context file exists already'),
  E_HOST_EXISTS: conflict('a host of that name is enrolled already'),
  E_ADMIN_EXISTS: conflict('an admin credential of that name exists already'),
  E_CERT_NOT_FOUND: notFound('the host has no certificate with that serial'),
  E_TOKEN_REFUSED: { status: 403, exit: EXIT.failed, retryable: false, meaning: 'the enrolment token was refused' },
  E_CRL_NOT_PUSHED: failed('some hosts did not take the revocation list', true),
  E_RENEW_FAILED: failed('some hosts could not be renewed', true),
  E_RENEWAL: conflict('the host cannot make a renewal request'),
  E_RENEWAL_NOT_FOUND: conflict('the host has no pending renewal request'),
  E_TLS_CRL: input('the revocation list file is not of this domain'),
  E_HOST_INITIALISED: conflict('this host was initialised already'),
  E_HOST_NOT_INITIALISED: conflict('this host has no key yet; run ferry host init'),
  E_REQUEST: failed('openssl could not make a certificate request'),
  E_ENROL_STATE: failed('an enrolment file is not valid'),
  // Host configuration (docs/install.md)
  E_MIGRATION_ADDRESS: input('the migration address or port range is not usable on this host'),
  E_PORTS_EXHAUSTED: {
    status: 503,
    exit: EXIT.failed,
    retryable: true,
    meaning: 'every port of the migration range is in use',
  },
  // The web console (docs/console.md)
  E_CONSOLE_NO_USERS: conflict('the console has no users yet; add one with ferry console user add'),
  E_CONSOLE_TLS: input("the console's TLS files are missing or wrong"),
  E_AUDIT_UNREADABLE: failed("the agent's audit log cannot be read; its permissions or the disk need a look"),
  E_CONSOLE_INTERNAL: failed('the console failed; its log has the details'),
  E_CONSOLE_USERS_MODE: input('the console users file is readable by others'),
  E_CONSOLE_USERS_INVALID: failed('the console users file is not valid'),
  E_CONSOLE_USER_EXISTS: conflict('a console user of that name exists'),
  E_CONSOLE_BAD_PATH: input('the console proxies only plain agent paths'),
  E_CONSOLE_BAD_REQUEST: input('the console could not read the request'),
  E_LOGIN_BUSY: { status: 429, exit: EXIT.failed, retryable: true, meaning: 'too many logins at once' },
  E_CONSOLE_CSRF: { status: 403, exit: EXIT.failed, retryable: false, meaning: 'the CSRF token is missing or wrong' },
  E_CONSOLE_FORBIDDEN: {
    status: 403,
    exit: EXIT.failed,
    retryable: false,
    meaning: 'the console role may not do this',
  },
  E_CONSOLE_HOST: input('the request named a host header the console does not serve'),
  E_CONSOLE_MEDIA_TYPE: { status: 415, exit: EXIT.usage, retryable: false, meaning: 'the body must be JSON' },
  E_CONSOLE_METHOD: { status: 405, exit: EXIT.usage, retryable: false, meaning: 'the method is not allowed there' },
  E_CONSOLE_ORIGIN: { status: 403, exit: EXIT.failed, retryable: false, meaning: 'a cross-site request was refused' },
  E_CONSOLE_STREAMS: { status: 429, exit: EXIT.failed, retryable: true, meaning: 'too many event streams open' },
  E_CONSOLE_USER_NOT_FOUND: notFound('no console user of that name'),
} as const satisfies Record<string, ErrorInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

export function isErrorCode(s: string): s is ErrorCode {
  return Object.hasOwn(ERROR_CODES, s);
}

/** What a code means for callers; an unknown code (a newer peer) is a plain failure. */
export function errorInfo(code: string): ErrorInfo {
  return isErrorCode(code) ? ERROR_CODES[code] : ERROR_CODES.E_INTERNAL;
}
