import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { Engine } from '../engine.js';

export function switchRoutes(app: FastifyInstance, engine: Engine): void {
  registerAction(app, actions.switchList, async () => engine.listSwitches());
  registerAction(app, actions.switchCreate, async ({ body }) => engine.createSwitch(body));
  registerAction(app, actions.switchRemove, async ({ params }) => {
    await engine.removeSwitch(params.name);
    return { ok: true as const };
  });
}
