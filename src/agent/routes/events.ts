// Server-sent events: the engine's event stream, resumable with ?since=SEQ or Last-Event-ID.
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';

const Query = z.object({ since: z.coerce.number().int().min(0).optional() });

export function eventRoutes(app: FastifyInstance, engine: { events: import('../events.js').EventBus }): void {
  app.get(
    '/v1/events',
    {
      config: { roles: ['admin', 'host'] },
      schema: { querystring: Query, summary: 'Engine events (text/event-stream)' },
    },
    (req, reply) => {
      const q = req.query as z.infer<typeof Query>;
      const last = Number(req.headers['last-event-id'] ?? q.since ?? engine.events.lastSeq);
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-store',
        connection: 'keep-alive',
      });
      const send = (e: { seq: number }): void => {
        res.write(`id: ${e.seq}\nevent: ferry\ndata: ${JSON.stringify(e)}\n\n`);
      };
      for (const e of engine.events.since(Number.isFinite(last) ? last : 0)) send(e);
      const off = engine.events.subscribe(send);
      const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
      req.raw.once('close', () => {
        off();
        clearInterval(ping);
      });
    },
  );
}
