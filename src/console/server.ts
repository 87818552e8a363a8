// `ferry console`: serves the web app and proxies the agents' API and event streams with
// its admin credential. People log in with the token it prints at start; nothing is served
// to anyone without a session (the app's files excepted: they hold no data).
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { FerryError } from '../errors.js';
import { Clients, type Context } from '../cli/context.js';
import { REPO_ROOT } from '../../guest/paths.js';

const COOKIE = 'ferry_session';
const SESSION_MS = 12 * 3600_000;
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.json': 'application/json',
  '.ico': 'image/x-icon',
  '.map': 'application/json',
};

export interface ConsoleOptions {
  context: Context;
  token: string;
  webDir?: string;
}

/**
 * The built web app: FERRY_WEB_DIR, else `web` beside the running bundle (the package's
 * /usr/lib/ferry/web next to /usr/lib/ferry/cli.mjs), else the checkout's web/dist.
 */
export function defaultWebDir(): string {
  if (process.env.FERRY_WEB_DIR) return path.resolve(process.env.FERRY_WEB_DIR);
  const beside = path.join(path.dirname(fileURLToPath(import.meta.url)), 'web');
  return fs.existsSync(path.join(beside, 'index.html')) ? beside : path.join(REPO_ROOT, 'web', 'dist');
}

export async function buildConsole(o: ConsoleOptions): Promise<FastifyInstance> {
  const webDir = o.webDir ?? defaultWebDir();
  if (!fs.existsSync(path.join(webDir, 'index.html'))) {
    throw new FerryError(
      'E_WEB_NOT_BUILT',
      `Cannot serve the console: the web app is not built in ${webDir}; run scripts/setup (it builds it)`,
      {},
    );
  }
  const clients = new Clients(o.context);
  const sessions = new Map<string, number>();
  const app = Fastify({ bodyLimit: 1024 * 1024 });
  app.addHook('onClose', async () => clients.close());
  // Bodies are forwarded untouched.
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  const session = (req: FastifyRequest): boolean => {
    const m = /(?:^|;\s*)ferry_session=([A-Za-z0-9_-]+)/.exec(req.headers.cookie ?? '');
    const exp = m ? sessions.get(m[1]!) : undefined;
    return exp !== undefined && exp > Date.now();
  };
  const deny = (reply: FastifyReply): FastifyReply =>
    reply.code(401).send({
      error: {
        code: 'E_UNAUTHENTICATED',
        message: 'Cannot serve the request: not logged in; log in with the token ferry console printed',
      },
    });

  app.post('/api/login', async (req, reply) => {
    let token = '';
    try {
      token = String((JSON.parse(String(req.body ?? '{}')) as { token?: unknown }).token ?? '');
    } catch {
      /* bad JSON: empty token */
    }
    const a = crypto.createHash('sha256').update(token).digest();
    const b = crypto.createHash('sha256').update(o.token).digest();
    if (!token || !crypto.timingSafeEqual(a, b)) {
      await new Promise((r) => setTimeout(r, 300)); // slow down guessing
      return reply.code(401).send({
        error: {
          code: 'E_UNAUTHENTICATED',
          message: 'Cannot log in: wrong token; use the token ferry console printed at start',
        },
      });
    }
    const id = crypto.randomBytes(24).toString('base64url');
    sessions.set(id, Date.now() + SESSION_MS);
    void reply.header('set-cookie', `${COOKIE}=${id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${SESSION_MS / 1000}`);
    return { ok: true };
  });
  app.post('/api/logout', async (req, reply) => {
    const m = /(?:^|;\s*)ferry_session=([A-Za-z0-9_-]+)/.exec(req.headers.cookie ?? '');
    if (m) sessions.delete(m[1]!);
    void reply.header('set-cookie', `${COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`);
    return { ok: true };
  });
  app.get('/api/session', async (req, reply) => (session(req) ? { hosts: o.context.hosts } : deny(reply)));

  app.all('/api/hosts/:host/*', async (req, reply) => {
    if (!session(req)) return deny(reply);
    const { host } = req.params as { host: string };
    let client;
    try {
      client = clients.host(host);
    } catch (err) {
      return reply.code(404).send({ error: { code: 'E_HOST_NOT_FOUND', message: (err as Error).message } });
    }
    const rest = req.url.slice(`/api/hosts/${encodeURIComponent(host)}`.length);
    if (!rest.startsWith('/v1/'))
      return reply.code(404).send({
        error: { code: 'E_ROUTE_NOT_FOUND', message: `Cannot proxy ${rest}: only /v1/ agent routes are served` },
      });
    reply.hijack();
    const ac = new AbortController();
    reply.raw.on('close', () => ac.abort());
    await client.forward(
      req.method,
      rest,
      req.body as Buffer | undefined,
      req.headers['content-type'],
      reply.raw,
      ac.signal,
    );
    return reply;
  });
  app.all('/api/*', async (req, reply) =>
    session(req)
      ? reply.code(404).send({ error: { code: 'E_ROUTE_NOT_FOUND', message: `Cannot serve ${req.url}` } })
      : deny(reply),
  );

  // The app's files; unknown paths get index.html (client-side routes).
  app.get('/*', async (req, reply) => {
    const rel = decodeURIComponent(req.url.split('?')[0]!).replace(/^\/+/, '');
    let file = path.resolve(webDir, rel || 'index.html');
    if (!file.startsWith(webDir + path.sep) && file !== webDir) file = path.join(webDir, 'index.html');
    const st = await fsp.stat(file).catch(() => null);
    if (!st?.isFile()) file = path.join(webDir, 'index.html');
    void reply.type(TYPES[path.extname(file)] ?? 'application/octet-stream');
    if (file.endsWith('index.html')) void reply.header('cache-control', 'no-store');
    return reply.send(await fsp.readFile(file));
  });
  return app;
}

export function newToken(): string {
  return crypto.randomBytes(18).toString('base64url');
}
