// OpenAPI document (generated from the action schemas) and Prometheus metrics.
import type { FastifyInstance } from 'fastify';
import client from 'prom-client';
import type { EventBus } from '../../events/bus.js';
import type { VmInventory } from '../vms.js';

export function metaRoutes(app: FastifyInstance, parts: { vms: VmInventory; events: EventBus }): void {
  app.get('/openapi.json', { config: { roles: ['admin', 'host'] }, schema: { hide: true } }, () =>
    Promise.resolve(app.swagger()),
  );

  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'ferry_agent_' });
  new client.Gauge({
    name: 'ferry_vms',
    help: 'VMs registered on this host, by state',
    labelNames: ['state'],
    registers: [registry],
    async collect() {
      const counts: Record<string, number> = { running: 0, paused: 0, stopped: 0, migrating: 0 };
      for (const v of await parts.vms.list()) counts[v.state] = (counts[v.state] ?? 0) + 1;
      for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
    },
  });
  new client.Gauge({
    name: 'ferry_events_total',
    help: 'Events the engine has emitted',
    registers: [registry],
    collect() {
      this.set(parts.events.lastSeq);
    },
  });
  app.get('/metrics', { config: { roles: ['admin', 'host'] }, schema: { hide: true } }, async (_req, reply) => {
    void reply.type(registry.contentType);
    return registry.metrics();
  });
}
