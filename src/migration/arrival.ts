// Whether a VM arriving on this host stays clustered (HA). A VM is HA in one cluster only: moving
// between nodes of that cluster keeps it HA; arriving from a host outside this host's cluster
// (a standalone host, another cluster), or on a host in no cluster, it arrives not HA. The
// administrator makes it HA here on purpose ('ferry cluster add-vm', with its shared-storage
// check); nothing does it silently.
import type { VmSpec } from '../vm/spec.js';
import type { MoveCluster } from './host.js';

export interface ArrivalFacts {
  vm: string;
  /** The VM's config says HA. */
  ha: boolean;
  source: string;
  /** This host's cluster, if it is in one. */
  cluster: string | null;
  /** The source is a node of this host's cluster. */
  sourceIsMember: boolean;
}

export interface ArrivalDecision {
  ha: boolean;
  /** Why HA was cleared, for the log; null when nothing changed. */
  note: string | null;
}

export function haOnArrival(f: ArrivalFacts): ArrivalDecision {
  if (!f.ha) return { ha: false, note: null };
  if (f.cluster === null)
    return { ha: false, note: `${f.vm} arrives not HA (ha: false): ${f.source}'s cluster does not reach this host` };
  if (!f.sourceIsMember)
    return {
      ha: false,
      note:
        `${f.vm} arrives not HA (ha: false): it comes from ${f.source}, outside cluster '${f.cluster}'; ` +
        `to make it HA there run 'ferry cluster add-vm ${f.vm}'`,
    };
  return { ha: true, note: null };
}

/** The spec as this host keeps it: HA (and its cluster policy) cleared when the decision says so. */
export function arrivingSpec(spec: VmSpec, d: ArrivalDecision): VmSpec {
  if (d.ha || !spec.ha) return spec;
  const next = structuredClone(spec);
  next.ha = false;
  delete next.cluster;
  return next;
}

/** Reads the facts from this host's cluster. Without an answer from etcd the VM keeps its HA flag. */
export async function decideArrival(
  cluster: MoveCluster | null,
  spec: VmSpec,
  source: string,
): Promise<ArrivalDecision> {
  if (!spec.ha) return { ha: false, note: null };
  const sourceIsMember = cluster ? await cluster.isMember(source).catch(() => true) : false;
  return haOnArrival({ vm: spec.name, ha: spec.ha, source, cluster: cluster?.name ?? null, sourceIsMember });
}
