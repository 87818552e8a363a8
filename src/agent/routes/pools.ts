import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { Engine } from '../engine.js';

export function poolRoutes(app: FastifyInstance, engine: Engine): void {
  registerAction(app, actions.poolList, async () => engine.listPools());
  registerAction(app, actions.poolBrowse, async ({ params, query }) => engine.browsePool(params.name, query.path));
  registerAction(app, actions.poolAdd, async ({ body }) => engine.addPool(body));
  registerAction(app, actions.poolGrant, async ({ params, body }) => engine.grantPool(params.name, body.host, true));
  registerAction(app, actions.poolRevoke, async ({ params, body }) => engine.grantPool(params.name, body.host, false));
}
