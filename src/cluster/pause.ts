// `ferry cluster pause NODE`: the node takes no new VMs, and nothing is moved off it (Hyper-V's
// "Pause" without "Drain Roles"). A pause is the same paused/<node> key a drain writes, with
// reason 'admin': every path that places a VM (drain plans, HA restarts, the queue, fail-back,
// an explicit move's pre-flight check) already reads that one key, and 'ferry cluster resume'
// deletes it whichever wrote it. Only leader-eligible nodes may write paused/ (auth.ts).
import { FerryError, NotFoundError } from '../errors.js';
import type { PauseResult } from '../api/schemas.js';
import type { z } from 'zod';
import * as K from './keys.js';
import { decision, type ClusterCtx } from './context.js';
import { readNodes } from './records.js';

export async function pauseNode(
  ctx: ClusterCtx,
  node: string,
  opts: { signal?: AbortSignal } = {},
): Promise<z.infer<typeof PauseResult>> {
  const what = `pause node '${node}'`;
  const nodes = await readNodes(ctx.store, ctx.onBad, opts);
  if (!nodes.members[node])
    throw new NotFoundError(
      'E_NODE_NOT_FOUND',
      `Cannot ${what}: it is not a member of the cluster; 'ferry cluster status' lists the nodes`,
      { node },
    );
  const key = K.paused.key(node);
  return decision(ctx.self, what, async () => {
    for (let attempt = 0; attempt < 5; attempt++) {
      const cur = await K.readOne(ctx.store, K.paused, node, opts);
      if (cur) return { node, changed: false, ...cur.value };
      const rec = { reason: 'admin' as const, at: new Date().toISOString() };
      // Only if nobody paused or drained it meanwhile (a drain's reason is kept).
      const ok = await ctx.store.txn(
        { compare: [{ key, version: 0 }], success: [{ type: 'put', key, value: K.paused.encode(rec) }] },
        opts,
      );
      if (ok) return { node, changed: true, ...rec };
    }
    throw new FerryError('E_CLUSTER_BUSY', `Cannot ${what}: its state kept changing while we tried; try again`, {});
  });
}
