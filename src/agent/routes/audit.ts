// GET /v1/audit: this host's audit trail (written by the HTTP layer's hook, server.ts).
import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { AuditLog } from '../audit.js';

export function auditRoutes(app: FastifyInstance, audit: AuditLog, host: string): void {
  registerAction(app, actions.auditList, async ({ query, signal }) => {
    // Lines of requests answered just before this one are on disk first.
    await audit.flush();
    return { host, ...(await audit.read(query, signal)) };
  });
}
