import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { HostSettings } from '../host-settings.js';
import type { HostTls } from '../tls.js';

export function hostRoutes(app: FastifyInstance, settings: HostSettings, tls: HostTls): void {
  registerAction(app, actions.hostShow, async () => ({
    ...(await settings.view()),
    certificate: tls.certificateView(),
  }));
  registerAction(app, actions.hostSet, async ({ body }) => ({
    ...(await settings.set(body)),
    certificate: tls.certificateView(),
  }));
}
