// What cluster operations run with (the store, this node, its credentials, where bad values
// are reported), and how they talk to other nodes' agents.
import { AgentClient } from '../api/client.js';
import { actions } from '../api/actions.js';
import type { ClusterStore } from './store.js';
import type { OnBad } from './keys.js';
import type { ClusterNodes } from './model.js';
import type { PlacementNode } from './placement.js';
import { FerryError, messageOf } from '../errors.js';

export interface ClusterCtx {
  store: ClusterStore;
  self: string;
  tls: { ca: string; cert: string; key: string };
  /** Where a value in etcd that does not parse is reported (it is left out of the decision). */
  onBad: OnBad;
}

export function clientFor(ctx: ClusterCtx, name: string, endpoint: string): AgentClient {
  return new AgentClient({ endpoint, host: name, credentials: ctx.tls });
}

export async function withClient<T>(
  ctx: ClusterCtx,
  name: string,
  endpoint: string,
  fn: (c: AgentClient) => Promise<T>,
): Promise<T> {
  const c = clientFor(ctx, name, endpoint);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/** Nodes as placement sees them: up, paused, free memory (asked of each up node). */
export async function placementNodes(
  ctx: ClusterCtx,
  nodes: ClusterNodes,
  opts: { signal?: AbortSignal } = {},
): Promise<PlacementNode[]> {
  return Promise.all(
    Object.keys(nodes.members)
      .sort()
      .map(async (name) => {
        const up = nodes.up[name];
        if (!up) return { name, up: false, paused: nodes.paused.has(name), freeMiB: 0 };
        const paused = nodes.paused.has(name);
        // A node that does not answer is not a place to go.
        return withClient(ctx, name, up.endpoint, (c) =>
          c.call(actions.hostShow, {}, { timeoutMs: 15_000, ...(opts.signal ? { signal: opts.signal } : {}) }),
        ).then(
          (h) => ({ name, up: true, paused, freeMiB: Math.max(0, Math.floor(h.memory.freeBytes / 1048576)) }),
          // A peer's error text, bounded: it goes into the leader's events and log.
          (err: unknown) => ({ name, up: false, paused, freeMiB: 0, unreachable: messageOf(err).slice(0, 300) }),
        );
      }),
  );
}

/** etcd refused a cluster decision taken with this node's credential: say who may take it. */
export function notEligible(self: string, what: string, cause: unknown): FerryError {
  return new FerryError(
    'E_CLUSTER_NOT_ELIGIBLE',
    `Cannot ${what}: node '${self}' may not make cluster decisions (the administrator did not let it lead); ` +
      `send the command to a leader-eligible node, or let this one lead ('ferry cluster join CLUSTER --host ${self} ` +
      "--etcd URL')",
    { cause, context: { node: self } },
  );
}

/** Runs a cluster decision (a write only leader-eligible nodes may make); a refusal becomes E_CLUSTER_NOT_ELIGIBLE. */
export async function decision<T>(self: string, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof FerryError && err.code === 'E_STORE_DENIED') throw notEligible(self, what, err);
    throw err;
  }
}
