import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { Pools } from '../pools.js';

export function poolRoutes(app: FastifyInstance, pools: Pools): void {
  registerAction(app, actions.poolList, () => pools.views());
  registerAction(app, actions.poolBrowse, ({ params, query }) => pools.browse(params.name, query.path));
  registerAction(app, actions.poolAdd, ({ body }) => pools.add(body));
  registerAction(app, actions.poolGrant, ({ params, body }) => pools.grant(params.name, body.host, true));
  registerAction(app, actions.poolRevoke, ({ params, body }) => pools.grant(params.name, body.host, false));
}
