import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { Switches } from '../switches.js';

export function switchRoutes(app: FastifyInstance, switches: Switches): void {
  registerAction(app, actions.switchList, () => Promise.resolve(switches.list()));
  registerAction(app, actions.switchCreate, ({ body }) => switches.create(body));
  registerAction(app, actions.switchRemove, async ({ params }) => {
    await switches.remove(params.name);
    return { ok: true as const };
  });
}
