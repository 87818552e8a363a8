// Begin (Compare-VM): can this VM move there now? Run by `compare-vm`, when a move is asked
// for, and again when it leaves the queue (things change while a move waits).
import type { AgentClient } from '../api/client.js';
import { actions } from '../api/actions.js';
import { peerActions } from '../api/peer-actions.js';
import type { HostView } from '../api/schemas.js';
import { FerryError, messageOf } from '../errors.js';
import { imageInfo } from '../qemu/img.js';
import { compareVm, compareWarnings, type Incompatibility } from './compare.js';
import { loadTree } from '../checkpoint/store.js';
import { allocatedBytes, listCheckpoints } from '../checkpoint/checkpoints.js';
import type { VmSpec } from '../vm/spec.js';
import type { MoveHost } from './host.js';
import { withDefaults } from './plan.js';
import type { CompareReport, Destination, MoveOptions } from './schemas.js';

export interface Gathered {
  report: CompareReport;
  destView: HostView | null;
  /** The options with their defaults (shared nothing without a path: the destination's local pool). */
  options: MoveOptions;
}

/** Node's codes for a peer whose certificate we do not trust (or that does not trust ours). */
const TLS_TRUST_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_HAS_EXPIRED',
  'CERT_REVOKED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

function isTlsTrustFailure(err: unknown): boolean {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code && (TLS_TRUST_CODES.has(code) || code.startsWith('ERR_SSL_'))) return true;
  }
  return false;
}

export function report(incompatibilities: Incompatibility[], warnings: Incompatibility[] = []): CompareReport {
  return { compatible: incompatibilities.length === 0, incompatibilities, warnings };
}

/** The report, the destination's view and the options with defaults; never throws for an unreachable peer. */
export async function gather(
  host: MoveHost,
  dest: AgentClient,
  vmName: string,
  to: Destination,
  optionsIn: MoveOptions,
  opts: { signal?: AbortSignal } = {},
): Promise<Gathered> {
  const spec = await host.vms.spec(vmName);
  // Every question to the destination at once (one round trip, not two): only the options'
  // defaults need its view. Their failures count only once it answered hostShow.
  const later = Promise.all([
    dest.call(peerActions.vms, {}, { signal: opts.signal, timeoutMs: 30_000 }),
    dest.call(peerActions.cpuModels, {}, { signal: opts.signal, timeoutMs: 60_000 }),
    host.hostView(),
  ]);
  later.catch(() => undefined);
  let destView: HostView;
  try {
    destView = await dest.call(actions.hostShow, {}, { signal: opts.signal, timeoutMs: 30_000 });
  } catch (err) {
    if (err instanceof FerryError && err.code === 'E_ABORTED') throw err;
    const m = messageOf(err);
    const inc: Incompatibility = isTlsTrustFailure(err)
      ? {
          code: 'E_DOMAIN',
          field: 'destination',
          message:
            `Cannot move VM '${vmName}' to '${to.name}': it is not in this host's domain ` +
            `(its TLS certificate is not from our CA: ${m}); ` +
            `join it to the domain with a host certificate signed by this domain's CA`,
        }
      : {
          code: 'E_DEST_UNREACHABLE',
          field: 'destination',
          message:
            `Cannot move VM '${vmName}' to '${to.name}': its agent does not answer at ${to.endpoint} (${m}); ` +
            'start it or check the address',
        };
    return { destView: null, options: optionsIn, report: report([inc]) };
  }
  const options = withDefaults(optionsIn, vmName, destView);
  const [destVms, destCpuModels, source] = await later;
  const diskSizes: Record<string, number> = {};
  if (options.includeStorage) {
    for (const d of spec.disks) {
      diskSizes[d.path] = await imageInfo(d.path, { forceShare: true, format: d.format }).then(
        (i) => i.actualSizeBytes,
        () => 0,
      );
    }
  }
  const running = host.vms.proc(vmName) !== null;
  const chainBytes = options.includeStorage ? await checkpointBytes(spec) : 0;
  const compareInput = {
    spec,
    running,
    source,
    dest: destView,
    destVms,
    destCpuModels,
    options,
    diskSizes,
    chainBytes,
    ...(options.includeStorage ? {} : { sharedFiles: await checkpointBases(spec) }),
  };
  const incompatibilities = compareVm(compareInput);
  // In a cluster, a paused (drained) node takes no VMs.
  const cluster = host.cluster();
  if (cluster && (await cluster.isPaused(to.name).catch(() => false))) {
    incompatibilities.push({
      code: 'E_NODE_PAUSED',
      field: 'destination',
      message:
        `Cannot move VM '${vmName}' to '${to.name}': that node is paused in cluster '${cluster.name}' ` +
        `(drained or paused for maintenance); choose another node or run 'ferry cluster resume ${to.name}'`,
    });
  }
  return { report: report(incompatibilities, compareWarnings(compareInput)), destView, options };
}

/** The base images of a VM's checkpoints (its disks before the first): with shared storage they must be shared too. */
export async function checkpointBases(spec: VmSpec): Promise<string[]> {
  const tree = await loadTree(spec);
  if (tree.checkpoints.length === 0) return [];
  return Object.values(tree.base).map((b) => b.path);
}

/** What a VM's checkpoints take on disk: every checkpoint's files and the base images below them. */
async function checkpointBytes(spec: VmSpec): Promise<number> {
  const list = await listCheckpoints(spec);
  if (list.checkpoints.length === 0) return 0;
  let bytes = list.checkpoints.reduce((a, c) => a + c.sizeBytes, 0);
  for (const b of await checkpointBases(spec)) bytes += await allocatedBytes(b);
  return bytes;
}

/** The refusal of a move whose report is not compatible. */
export function incompatibleError(vm: string, to: string, rep: CompareReport): FerryError {
  const reasons = rep.incompatibilities.map((i) => i.message.replace(/^Cannot move VM '[^']*' to '[^']*': /, ''));
  return new FerryError('E_INCOMPATIBLE', `Cannot move VM '${vm}' to '${to}': ${reasons.join(' | ')}`, {
    context: { incompatibilities: rep.incompatibilities },
  });
}
