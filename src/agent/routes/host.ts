import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { Engine } from '../engine.js';

export function hostRoutes(app: FastifyInstance, engine: Engine): void {
  registerAction(app, actions.hostShow, async () => engine.hostView());
  registerAction(app, actions.hostSet, async ({ body }) => engine.hostSet(body));
}
