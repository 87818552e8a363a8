// `ferry console`: serves the web app over HTTPS and proxies the agents' API and event
// streams with its admin credential, on behalf of named users with roles. Before anything
// else, every request shows a Host the console is known by; every state-changing request
// shows the console's own Origin (or Referer) and, once logged in, the session's CSRF token
// in a header; the proxy forwards only the actions the user's role may call (roles.ts) and
// tells the agent who asked (X-Ferry-Actor: console:NAME, X-Ferry-Actor-Role: ROLE). The app's files hold no data
// and are served to anyone; nothing else is served without a session. A VM's screen is a
// websocket relayed to the agent's VNC websocket (screen.ts), its upgrade checked as a change.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import tls_ from 'node:tls';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import websocket from '@fastify/websocket';
import * as z from 'zod';
import { FerryError } from '../errors.js';
import { Clients, type Context } from '../cli/context.js';
import { REPO_ROOT } from '../../guest/paths.js';
import { allowedActions, cleanAgentPath, decide, SCREEN_MIN_ROLE, roleAtLeast } from './roles.js';
import { DEFAULT_LIMITS, SessionStore, type Session, type SessionLimits } from './sessions.js';
import { UserStore, verifyDecoy, verifyPassword, type ConsoleUser } from './users.js';
import { allowedOrigins, hostAllowed, requestOrigin, setSecurityHeaders } from './guard.js';
import type { ConsoleTls } from './tls.js';
import { ACTOR_HEADER, ACTOR_ROLE_HEADER, NAME_RE } from '../api/common.js';
import { relayScreen, csrfFromProtocols, SCREEN_PROTOCOL } from './screen.js';

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
/** The header the app sends the session's CSRF token in. */
export const CSRF_HEADER = 'x-ferry-csrf';
const SAFE_METHODS = new Set(['GET', 'HEAD']);
/** Event streams one session may hold open through the proxy (a page needs one per host). */
const STREAMS_PER_SESSION = 16;
/** Password checks at once: each scrypt holds 32 MiB and a thread for ~0.1 s. */
const LOGINS_AT_ONCE = 4;
const FORWARD_TIMEOUT_MS = 120_000;

export interface ConsoleOptions {
  context: Context;
  users: UserStore;
  /** null: plain HTTP (loopback only; the caller checks). */
  tls: ConsoleTls | null;
  /** Names the console answers to over plain HTTP (its loopback names). */
  httpNames?: string[];
  /** Origins beyond the certificate's names (a reverse proxy's). */
  extraOrigins?: string[];
  limits?: Partial<SessionLimits>;
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

const LoginBody = z.object({ name: z.string().min(1).max(63), password: z.string().min(1).max(1024) }).strict();

function apiError(reply: FastifyReply, status: number, code: string, message: string): FastifyReply {
  return reply.code(status).header('cache-control', 'no-store').send({ error: { code, message } });
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
  const secure = o.tls !== null;
  const cookie = secure ? '__Host-ferry_session' : 'ferry_session';
  const cookieRe = new RegExp(`(?:^|;\\s*)${cookie}=([A-Za-z0-9_-]{1,100})(?:;|$)`);
  const clients = new Clients(o.context);
  const sessions = new SessionStore({ ...DEFAULT_LIMITS, ...o.limits });
  const sessionOf = new WeakMap<FastifyRequest, Session>();
  // The decoy hash is made now, so the first login of an unknown name is not slower than the others.
  await verifyDecoy('');
  let loginsNow = 0;
  const app = Fastify({
    bodyLimit: 1024 * 1024,
    ...(o.tls ? { https: { key: o.tls.key, cert: o.tls.cert, minVersion: 'TLSv1.2' as const } } : {}),
  });
  // A VM's screen (noVNC) comes as a websocket; the browser's CSRF token rides in its
  // subprotocols (a page cannot set headers on a websocket), the answer names only 'binary'.
  await app.register(websocket, {
    options: {
      maxPayload: 64 * 1024,
      handleProtocols: (protocols) => (protocols.has(SCREEN_PROTOCOL) ? SCREEN_PROTOCOL : false),
    },
  });
  app.addHook('onClose', (_app, done) => {
    sessions.close();
    clients.close();
    done();
  });
  // Bodies are forwarded untouched; only JSON (or none) is accepted: a form post from
  // elsewhere is refused before anything looks at it.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) => {
    done(null, body);
  });
  app.setErrorHandler((err: FerryError & { statusCode?: number }, _req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    const code =
      status === 415 ? 'E_CONSOLE_MEDIA_TYPE' : status < 500 ? 'E_CONSOLE_BAD_REQUEST' : 'E_CONSOLE_INTERNAL';
    const message =
      status === 415
        ? 'Cannot read the request: the console accepts JSON bodies only; send content-type application/json'
        : status < 500
          ? `Cannot read the request: ${err.message}`
          : 'Cannot serve the request: the console failed; see its log';
    if (status >= 500) app.log.error(err);
    return apiError(reply, status, code, message);
  });

  const origins = (req: FastifyRequest): Set<string> =>
    allowedOrigins(
      { https: secure, names: o.tls?.names ?? o.httpNames ?? [], extraOrigins: o.extraOrigins ?? [] },
      req.socket.localPort ?? 0,
    );

  // The guard: runs before any body is read.
  app.addHook('onRequest', async (req, reply) => {
    setSecurityHeaders(reply.raw, secure);
    const mine = origins(req);
    if (!hostAllowed(mine, req.headers, secure))
      return apiError(
        reply,
        421,
        'E_CONSOLE_HOST',
        `Cannot serve a request for host '${req.headers.host ?? ''}': this console answers to ${[...mine].join(', ')}` +
          '; open one of those (or start the console with --origin for a proxy)',
      );
    const url = pathOf(req.url);
    if (!url.startsWith('/api/')) return;
    void reply.header('cache-control', 'no-store');
    // A websocket upgrade is a GET, but it opens a channel that types into a VM: it is
    // checked like a state-changing request (a cross-site page can open websockets too).
    const upgrade = (req.headers.upgrade ?? '').toLowerCase() === 'websocket';
    const unsafe = !SAFE_METHODS.has(req.method) || upgrade;
    if (unsafe) {
      const from = requestOrigin(req.headers);
      if (!from || !mine.has(from))
        return apiError(
          reply,
          403,
          'E_CONSOLE_ORIGIN',
          `Cannot ${req.method} ${url}: the request comes from ${from ?? 'an unknown origin'}, not from this ` +
            'console; use the console itself',
        );
    }
    if (url === '/api/login') return;
    const id = cookieRe.exec(req.headers.cookie ?? '')?.[1];
    const s = id ? sessions.touch(id) : undefined;
    const user = s ? await o.users.get(s.user).catch(() => undefined) : undefined;
    if (!s || !user || user.role !== s.role || user.changedAt !== s.userStamp) {
      if (s) sessions.end(s.id);
      return apiError(
        reply,
        401,
        'E_UNAUTHENTICATED',
        'Cannot serve the request: not logged in (or the session ended); log in again',
      );
    }
    if (unsafe) {
      const sent = Buffer.from(
        upgrade ? csrfFromProtocols(req.headers['sec-websocket-protocol']) : String(req.headers[CSRF_HEADER] ?? ''),
      );
      const want = Buffer.from(s.csrf);
      if (sent.length !== want.length || !crypto.timingSafeEqual(sent, want))
        return apiError(
          reply,
          403,
          'E_CONSOLE_CSRF',
          `Cannot ${req.method} ${url}: the request lacks this session's CSRF token; use the console's pages`,
        );
    }
    sessionOf.set(req, s);
  });
  const sessionFor = (req: FastifyRequest): Session => {
    const s = sessionOf.get(req);
    if (!s) throw new FerryError('E_CONSOLE_INTERNAL', 'Cannot serve the request: no session was checked');
    return s;
  };
  const sessionView = (s: Session): object => ({
    user: { name: s.user, role: s.role },
    csrf: s.csrf,
    hosts: o.context.hosts,
    allowed: allowedActions(s.role),
  });

  app.post('/api/login', async (req, reply) => {
    const parsed = LoginBody.safeParse(jsonOf(req.body));
    if (!parsed.success)
      return apiError(reply, 400, 'E_INVALID_INPUT', 'Cannot log in: send {"name": ..., "password": ...} as JSON');
    if (loginsNow >= LOGINS_AT_ONCE)
      return apiError(reply, 429, 'E_LOGIN_BUSY', 'Cannot log in now: too many logins at once; try again shortly');
    const { name, password } = parsed.data;
    const check = async (): Promise<ConsoleUser | null> => {
      const u = await o.users.get(name);
      if (!u) return verifyDecoy(password).then(() => null);
      return (await verifyPassword(u.password, password)) ? u : null;
    };
    loginsNow++;
    const user = await check().finally(() => {
      loginsNow--;
    });
    if (!user) {
      await new Promise((r) => setTimeout(r, 300)); // slows guessing down further
      return apiError(reply, 401, 'E_UNAUTHENTICATED', 'Cannot log in: wrong user name or password');
    }
    const s = sessions.create(user.name, user.role, user.changedAt);
    const maxAge = Math.floor(sessions.limits.absoluteMs / 1000);
    void reply.header(
      'set-cookie',
      `${cookie}=${s.id}; HttpOnly; ${secure ? 'Secure; ' : ''}SameSite=Strict; Path=/; Max-Age=${maxAge}`,
    );
    return sessionView(s);
  });
  app.post('/api/logout', async (req, reply) => {
    sessions.end(sessionFor(req).id);
    void reply.header(
      'set-cookie',
      `${cookie}=; HttpOnly; ${secure ? 'Secure; ' : ''}SameSite=Strict; Path=/; Max-Age=0`,
    );
    return { ok: true };
  });
  app.get('/api/session', (req, reply) => {
    void reply.send(sessionView(sessionFor(req)));
  });

  // A VM's screen: operators and admins (a viewer sees no screen, as no serial console or
  // screenshot); the agent records who opened it from the actor headers.
  app.get(
    '/api/hosts/:host/v1/vms/:name/vnc',
    {
      websocket: true,
      // Refused before the upgrade, so the page sees why.
      preValidation: async (req, reply) => {
        const s = sessionFor(req);
        const { host } = req.params as { host: string };
        if (!roleAtLeast(s.role, SCREEN_MIN_ROLE))
          return apiError(
            reply,
            403,
            'E_CONSOLE_FORBIDDEN',
            `Cannot show a VM's screen: it needs the ${SCREEN_MIN_ROLE} role and you are ${s.role}; ` +
              'ask a console admin for a role that may',
          );
        if (!o.context.hosts.some((h) => h.name === host))
          return apiError(reply, 404, 'E_HOST_NOT_FOUND', `Cannot show a VM's screen: no host '${host}'`);
        if (!NAME_RE.test((req.params as { name: string }).name))
          return apiError(reply, 400, 'E_CONSOLE_BAD_PATH', `Cannot show a VM's screen: ${req.url} names no VM`);
        if (s.closers.size >= STREAMS_PER_SESSION)
          return apiError(
            reply,
            429,
            'E_CONSOLE_STREAMS',
            `Cannot open another screen: this session holds ${STREAMS_PER_SESSION} streams; close a console tab`,
          );
      },
    },
    (ws, req) => {
      const s = sessionFor(req);
      const { host, name } = req.params as { host: string; name: string };
      const client = clients.host(host);
      relayScreen(ws, s, () =>
        client.websocket(`/v1/vms/${encodeURIComponent(name)}/vnc`, {
          [ACTOR_HEADER]: `console:${s.user}`,
          [ACTOR_ROLE_HEADER]: s.role,
        }),
      );
    },
  );

  app.all('/api/hosts/:host/*', async (req, reply) => {
    const s = sessionFor(req);
    const { host } = req.params as { host: string };
    let client;
    try {
      client = clients.host(host);
    } catch (err) {
      return apiError(reply, 404, 'E_HOST_NOT_FOUND', (err as Error).message);
    }
    // The raw URL after /api/hosts/HOST: the agent must see exactly what was checked.
    const raw = req.url.split('/').slice(4).join('/');
    const q = raw.indexOf('?');
    const agentPath = cleanAgentPath('/' + (q < 0 ? raw : raw.slice(0, q)));
    if (!agentPath)
      return apiError(
        reply,
        400,
        'E_CONSOLE_BAD_PATH',
        `Cannot proxy ${req.url}: not a plain path (no dot segments, empty segments or encoded slashes)`,
      );
    if (!agentPath.startsWith('/v1/'))
      return apiError(
        reply,
        404,
        'E_ROUTE_NOT_FOUND',
        `Cannot proxy ${agentPath}: the console serves only the agents' /v1/ actions`,
      );
    const d = decide(s.role, req.method, agentPath);
    if (!d.ok)
      return apiError(
        reply,
        d.status,
        d.status === 403 ? 'E_CONSOLE_FORBIDDEN' : 'E_ROUTE_NOT_FOUND',
        `Cannot ${req.method} ${agentPath} on ${host}: ${d.reason}` +
          (d.status === 403 ? '; ask a console admin for a role that may' : ''),
      );
    // The agent's audit trail records the user and role, not the console's certificate.
    const headers: Record<string, string> = { [ACTOR_HEADER]: `console:${s.user}`, [ACTOR_ROLE_HEADER]: s.role };
    const ac = new AbortController();
    const signals = [ac.signal];
    if (d.action === 'events') {
      if (s.closers.size >= STREAMS_PER_SESSION)
        return apiError(
          reply,
          429,
          'E_CONSOLE_STREAMS',
          `Cannot open another event stream: this session holds ${STREAMS_PER_SESSION}; close a console tab`,
        );
      const last = req.headers['last-event-id'];
      if (typeof last === 'string' && /^\d{1,15}$/.test(last)) headers['last-event-id'] = last;
    } else signals.push(AbortSignal.timeout(FORWARD_TIMEOUT_MS));
    reply.hijack();
    // The session ended (logout, expiry): its open streams end too.
    const close = (): void => {
      ac.abort();
      if (reply.raw.headersSent) reply.raw.end();
      else reply.raw.destroy();
    };
    s.closers.add(close);
    reply.raw.on('close', () => {
      ac.abort();
      s.closers.delete(close);
    });
    await client.forward(
      req.method,
      agentPath + (q < 0 ? '' : raw.slice(q)),
      req.body as Buffer | undefined,
      req.headers['content-type'],
      reply.raw,
      AbortSignal.any(signals),
      headers,
    );
    return reply;
  });
  app.all('/api/*', async (req, reply) => apiError(reply, 404, 'E_ROUTE_NOT_FOUND', `Cannot serve ${req.url}`));

  // The app's files; unknown paths get index.html (client-side routes).
  app.get('/*', async (req, reply) => {
    let rel: string;
    try {
      rel = decodeURIComponent(pathOf(req.url)).replace(/^\/+/, '');
    } catch {
      return apiError(reply, 400, 'E_CONSOLE_BAD_PATH', `Cannot serve ${req.url}: bad percent-encoding`);
    }
    let file = path.resolve(webDir, rel || 'index.html');
    if (!file.startsWith(webDir + path.sep) && file !== webDir) file = path.join(webDir, 'index.html');
    const st = await fsp.stat(file).catch(() => null);
    if (!st?.isFile()) file = path.join(webDir, 'index.html');
    void reply.type(TYPES[path.extname(file)] ?? 'application/octet-stream');
    if (file.endsWith('index.html')) void reply.header('cache-control', 'no-store');
    return reply.send(await fsp.readFile(file));
  });
  app.setNotFoundHandler(async (req, reply) =>
    apiError(reply, 405, 'E_CONSOLE_METHOD', `Cannot ${req.method} ${req.url}: the app's files are only read`),
  );
  return app;
}

/** Puts a renewed certificate in place without a restart. */
export function renewTls(app: FastifyInstance, tls: ConsoleTls): void {
  const server: unknown = app.server;
  if (server instanceof tls_.Server) server.setSecureContext({ key: tls.key, cert: tls.cert, minVersion: 'TLSv1.2' });
}

function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

function jsonOf(body: unknown): unknown {
  if (!Buffer.isBuffer(body)) return null;
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch {
    return null;
  }
}
