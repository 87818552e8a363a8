// Server-sent events: the engine's event stream, resumable with Last-Event-ID (or ?since=SEQ).
// A client that resumes from an id the ring no longer holds first gets a `reset` event: it
// must read the current state once, then follow. Slow clients are not buffered without end:
// a stream whose socket stays full for MAX_BACKLOG events is closed (the client reconnects
// with its last id), and each certificate identity holds at most MAX_STREAMS streams.
import type { FastifyInstance } from 'fastify';
import * as z from 'zod';
import { FerryError } from '../../errors.js';
import type { EventBus } from '../../events/bus.js';
import type { FerryEvent } from '../../api/events.js';

const Query = z.object({ since: z.coerce.number().int().min(0).optional() });
const MAX_BACKLOG = 1000;
const MAX_STREAMS = 16;
const PING_MS = 15_000;

export function eventRoutes(app: FastifyInstance, events: EventBus): void {
  const open = new Map<string, number>();
  app.get(
    '/v1/events',
    {
      config: { roles: ['admin', 'host'] },
      schema: { querystring: Query, summary: 'Engine events (text/event-stream)' },
    },
    (req, reply) => {
      const q = req.query as z.infer<typeof Query>;
      // An admin certificate may speak for several people (the web console names its user in
      // x-ferry-actor): each of them gets the cap, so one busy console user cannot starve others.
      const actor = req.peer?.role === 'admin' ? req.headers['x-ferry-actor'] : undefined;
      const who =
        (req.peer ? `${req.peer.role}:${req.peer.name}` : 'unknown') + (typeof actor === 'string' ? `/${actor}` : '');
      const count = open.get(who) ?? 0;
      if (count >= MAX_STREAMS) {
        throw new FerryError(
          'E_TOO_MANY',
          `Cannot open another event stream for ${who}: it holds ${MAX_STREAMS} already; close one first`,
        );
      }
      const header = req.headers['last-event-id'];
      const lastRaw = Number(Array.isArray(header) ? header[0] : (header ?? q.since ?? events.lastSeq));
      const last = Number.isFinite(lastRaw) && lastRaw >= 0 ? lastRaw : events.lastSeq;
      open.set(who, count + 1);
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-store',
        connection: 'keep-alive',
      });
      // Headers now, not with the first event: a client that sees them knows it is subscribed
      // (everything below runs before any other request), so it can start a move and miss nothing.
      res.flushHeaders();
      let backlog: string[] = [];
      let closed = false;
      const frame = (e: FerryEvent): string => `id: ${e.seq}\nevent: ferry\ndata: ${JSON.stringify(e)}\n\n`;
      const write = (text: string): void => {
        if (closed) return;
        if (backlog.length) {
          backlog.push(text);
          if (backlog.length > MAX_BACKLOG) res.destroy(); // too slow: it reconnects with its last id
          return;
        }
        if (!res.write(text)) backlog.push(''); // mark: wait for 'drain' before writing more
      };
      res.on('drain', () => {
        const pending = backlog.filter((t) => t);
        backlog = [];
        for (const t of pending) write(t);
      });
      const missed = events.since(last);
      if (missed === null) write(`event: reset\ndata: {"lastSeq":${events.lastSeq}}\n\n`);
      for (const e of missed ?? []) write(frame(e));
      const off = events.subscribe((e) => write(frame(e)));
      const ping = setInterval(() => write(': ping\n\n'), PING_MS);
      req.raw.once('close', () => {
        closed = true;
        off();
        clearInterval(ping);
        const n = (open.get(who) ?? 1) - 1;
        if (n > 0) open.set(who, n);
        else open.delete(who);
      });
    },
  );
}
