import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { HostSettings } from '../host-settings.js';

export function hostRoutes(app: FastifyInstance, settings: HostSettings): void {
  registerAction(app, actions.hostShow, () => settings.view());
  registerAction(app, actions.hostSet, ({ body }) => settings.set(body));
}
