import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { Engine } from '../engine.js';
import type { HostTls } from '../tls.js';

export function hostRoutes(app: FastifyInstance, engine: Engine, tls: HostTls): void {
  registerAction(app, actions.hostShow, async () => ({
    ...(await engine.hostView()),
    certificate: tls.certificateView(),
  }));
  registerAction(app, actions.hostSet, async ({ body }) => ({
    ...(await engine.hostSet(body)),
    certificate: tls.certificateView(),
  }));
}
