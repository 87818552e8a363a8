import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import { NotFoundError } from '../../errors.js';
import type { Engine } from '../engine.js';
import type { Membership } from '../../cluster/membership.js';
import { planDrain, resumeNode, startDrain } from '../../cluster/drain.js';
import { writeLimits } from '../../cluster/keys.js';
import { decision } from '../../cluster/context.js';

export function clusterRoutes(app: FastifyInstance, engine: Engine): void {
  const member = (what: string): Membership => {
    if (!engine.membership)
      throw new NotFoundError(
        'E_CLUSTER_NOT_FOUND',
        `Cannot ${what}: host '${engine.name}' is not in a cluster; ` +
          "start the lab with 'ferry lab up --cluster' or join one with 'ferry cluster join'",
        {},
      );
    return engine.membership;
  };
  const ctx = (what: string) => {
    const m = member(what);
    return { store: m.need(what), self: engine.name, tls: engine.cfg.tls, onBad: m.onBad };
  };

  registerAction(app, actions.clusterStatus, async () => member('show the cluster').view());

  registerAction(app, actions.clusterDrain, async ({ params, body, signal }) => {
    const c = ctx(`drain node '${params.name}'`);
    const plan = await planDrain(c, params.name, { signal });
    if (body.dryRun) return { plan, batch: null };
    return { plan, batch: await startDrain(c, plan) };
  });

  registerAction(app, actions.clusterResume, async ({ params, body, signal }) => ({
    batch: await resumeNode(ctx(`resume node '${params.name}'`), params.name, { failback: body.failback, signal }),
  }));

  registerAction(app, actions.clusterAddVm, async ({ body }) => {
    const { vm, ...policy } = body;
    return engine.addClusterVm(vm, policy);
  });
  registerAction(app, actions.clusterRemoveVm, async ({ params }) => engine.removeClusterVm(params.name));

  registerAction(app, actions.clusterLimits, async ({ body, signal }) => {
    const c = ctx('change the cluster limits');
    return decision(c.self, 'change the cluster limits', () => writeLimits(c.store, body, c.onBad, { signal }));
  });

  registerAction(app, actions.clusterJoin, async ({ body, signal }) => engine.joinCluster(body, { signal }));
}
