// OpenAPI document (generated from the action schemas) and Prometheus metrics (metrics.ts).
import type { FastifyInstance } from 'fastify';
import { AgentMetrics, type MetricSources } from '../metrics.js';

export function metaRoutes(app: FastifyInstance, parts: MetricSources): void {
  app.get('/openapi.json', { config: { roles: ['admin', 'host'] }, schema: { hide: true } }, () =>
    Promise.resolve(app.swagger()),
  );

  const metrics = new AgentMetrics(parts);
  app.addHook('onClose', (_app, done) => {
    metrics.close();
    done();
  });
  app.get('/metrics', { config: { roles: ['admin', 'host'] }, schema: { hide: true } }, async (_req, reply) => {
    void reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
}
