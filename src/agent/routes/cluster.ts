import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import { NotFoundError } from '../../errors.js';
import type { Engine } from '../engine.js';

export function clusterRoutes(app: FastifyInstance, engine: Engine): void {
  registerAction(app, actions.clusterStatus, async () => {
    if (!engine.membership) throw new NotFoundError('E_CLUSTER_NOT_FOUND', `Cannot show the cluster: host '${engine.name}' is not in one; start the lab with 'ferry lab up --cluster'`, {});
    return engine.membership.view();
  });
}
