// The domain's admin-only routes on an agent: its TLS state, the revocation list the admin
// pushes, and certificate renewal (the request is made here, the signed certificate comes back).
import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { HostTls } from '../tls.js';

export function domainRoutes(app: FastifyInstance, tls: HostTls): void {
  registerAction(app, actions.domainTls, async () => tls.view());
  registerAction(app, actions.domainCrlPut, async ({ body }) => tls.putCrl(body));
  registerAction(app, actions.domainRenewal, async ({ body }) => tls.requestRenewal(body.force));
  registerAction(app, actions.domainCertificatePut, async ({ body }) => tls.installRenewed(body));
}
