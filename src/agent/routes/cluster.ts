import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { ClusterNode } from '../../cluster/node.js';
import { planDrain, resumeNode, startDrain } from '../../cluster/drain.js';
import { writeLimits } from '../../cluster/keys.js';
import { decision } from '../../cluster/context.js';
import { pauseNode } from '../../cluster/pause.js';

export function clusterRoutes(app: FastifyInstance, cluster: ClusterNode): void {
  registerAction(app, actions.clusterStatus, () => cluster.need('show the cluster').view());

  registerAction(app, actions.clusterDrain, async ({ params, body, signal }) => {
    const c = cluster.context(`drain node '${params.name}'`);
    const plan = await planDrain(c, params.name, { signal });
    if (body.dryRun) return { plan, batch: null };
    return { plan, batch: await startDrain(c, plan) };
  });

  registerAction(app, actions.clusterPause, ({ params, signal }) =>
    pauseNode(cluster.context(`pause node '${params.name}'`), params.name, { signal }),
  );

  registerAction(app, actions.clusterResume, async ({ params, body, signal }) => ({
    batch: await resumeNode(cluster.context(`resume node '${params.name}'`), params.name, {
      failback: body.failback,
      signal,
    }),
  }));

  registerAction(app, actions.clusterAddVm, ({ body }) => {
    const { vm, ...policy } = body;
    return cluster.addVm(vm, policy);
  });
  registerAction(app, actions.clusterRemoveVm, ({ params }) => cluster.removeVm(params.name));

  registerAction(app, actions.clusterLimits, async ({ body, signal }) => {
    const c = cluster.context('change the cluster limits');
    return decision(c.self, 'change the cluster limits', () => writeLimits(c.store, body, c.onBad, { signal }));
  });

  registerAction(app, actions.clusterJoin, ({ body, signal }) => cluster.join(body, { signal }));
}
