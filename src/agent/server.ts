// The agent's HTTP layer: HTTPS with mutual TLS, where a request only parses into a typed
// action (zod) and the agent's parts (VMs, pools, switches, moves…) do the work. Nothing here
// decides anything about VMs.
import crypto from 'node:crypto';
import { TLSSocket } from 'node:tls';
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import {
  serializerCompiler,
  validatorCompiler,
  jsonSchemaTransform,
  hasZodFastifySchemaValidationErrors,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import type { z } from 'zod';
import { FerryError } from '../errors.js';
import { identityFromSubject, type PeerIdentity, type Role } from '../domain/ca.js';
import type { Action, Out } from '../api/action.js';
import { ErrorBody } from '../api/schemas.js';
import { ACTOR_HEADER, ACTOR_ROLE_HEADER } from '../api/common.js';
import type { AgentConfig } from './config.js';
import type { HostTls } from './tls.js';
import { actorOf, outcomeOf, targetOf, type AuditLog } from './audit.js';
import type pino from 'pino';
import { SERVER_KEEPALIVE_MS } from '../api/keep-alive.js';
import { decodeIncoming, INCOMING_CONTENT_TYPE } from '../api/incoming-body.js';

declare module 'fastify' {
  interface FastifyRequest {
    peer?: PeerIdentity;
  }
  interface FastifyContextConfig {
    roles?: readonly Role[];
    /** The action's name, for the audit trail. */
    action?: string;
  }
}

export type Handler<A> =
  A extends Action<infer P, infer Q, infer B, infer R>
    ? (
        input: { params: Out<P>; query: Out<Q>; body: Out<B>; signal: AbortSignal },
        req: FastifyRequest,
        reply: FastifyReply,
      ) => Promise<z.input<R> | undefined>
    : never;

const sentFiles = new WeakMap<FastifyRequest, Buffer[]>();

/** The files' bytes that came after a request's JSON (INCOMING_CONTENT_TYPE); none for a JSON body. */
export function sentFilesOf(req: FastifyRequest): Buffer[] | undefined {
  return sentFiles.get(req);
}

/** Registers one typed action as a route. */
export function registerAction<A extends Action>(app: FastifyInstance, a: A, handler: Handler<A>): void {
  app.withTypeProvider<ZodTypeProvider>().route({
    method: a.method,
    url: a.path,
    config: { roles: a.roles, action: a.name },
    ...(a.bodyLimit ? { bodyLimit: a.bodyLimit } : {}),
    schema: {
      summary: a.summary,
      operationId: a.name,
      ...(a.params ? { params: a.params } : {}),
      ...(a.query ? { querystring: a.query } : {}),
      ...(a.body ? { body: a.body } : {}),
      response: { 200: a.response, '4xx': ErrorBody, '5xx': ErrorBody },
    },
    handler: async (req, reply) => {
      const ac = new AbortController();
      // The response closing before it finished means the client went away.
      reply.raw.once('close', () => {
        if (!reply.raw.writableFinished) ac.abort(new Error('client went away'));
      });
      return (handler as (i: unknown, r: FastifyRequest, rp: FastifyReply) => Promise<unknown>)(
        { params: req.params, query: req.query, body: req.body, signal: ac.signal },
        req,
        reply,
      );
    },
  });
}

export function statusFor(err: FerryError): number {
  return err.info.status;
}

function validationMessage(err: {
  validation?: Array<{ instancePath?: string; message?: string }>;
  validationContext?: string;
}): string {
  const where = err.validationContext === 'querystring' ? 'query' : (err.validationContext ?? 'request');
  const parts = (err.validation ?? []).slice(0, 5).map((v) => {
    const field = (v.instancePath ?? '').replace(/^\//, '').replace(/\//g, '.');
    return field ? `field '${field}' ${v.message?.replace(/^Invalid input: /, '')}` : `${v.message}`;
  });
  return `Cannot accept the ${where}: ${parts.join('; ')}; fix the value and try again`;
}

/**
 * Sets `req.peer` from the verified client certificate, or says why the request is refused:
 * no certificate of our CA, one of another domain, or a role the route does not admit.
 */
function certificateOf(req: FastifyRequest): PeerIdentity | null {
  const sock = req.raw.socket;
  if (!(sock instanceof TLSSocket) || !sock.authorized) return null;
  const cert = sock.getPeerCertificate();
  return Object.keys(cert).length ? identityFromSubject(cert.subject) : null;
}

function checkPeer(req: FastifyRequest, domainId: string): FerryError | null {
  const id = certificateOf(req);
  if (!id) {
    return new FerryError(
      'E_UNAUTHENTICATED',
      'Cannot serve the request: no valid Ferry certificate was presented; use a certificate issued by this domain',
      {},
    );
  }
  if (id.domainId !== domainId) {
    return new FerryError(
      'E_FORBIDDEN',
      `Cannot serve the request: the certificate belongs to another domain; use one issued by domain ${domainId}`,
      {},
    );
  }
  req.peer = id;
  const roles = req.routeOptions.config.roles ?? ['admin'];
  if (id.role !== 'admin' && !roles.includes(id.role)) {
    return new FerryError(
      'E_FORBIDDEN',
      `Cannot serve ${req.method} ${req.routeOptions.url}: the ${id.role} certificate of '${id.name}' ` +
        'may not call it; use an admin certificate',
      {},
    );
  }
  return null;
}

export interface ServerOptions {
  cfg: AgentConfig;
  /** Certificate and CRL, swapped without a restart. */
  tls: HostTls;
  logger: pino.Logger;
  domainId: string;
  /** Where every state-changing request's outcome is recorded. */
  audit: AuditLog;
}

/** Requests that change nothing: the audit trail skips them. */
const READS = new Set(['GET', 'HEAD', 'OPTIONS']);

export async function buildServer(o: ServerOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: o.logger,
    https: {
      ...o.tls.secureOptions(),
      // Mutual TLS: a client without a certificate from our CA fails the handshake.
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
    },
    bodyLimit: 1024 * 1024,
    keepAliveTimeout: SERVER_KEEPALIVE_MS,
    // Unique across restarts: the audit trail and the log name requests by it.
    genReqId: () => crypto.randomUUID(),
    logController: new LogController({ disableRequestLogging: true }),
    routerOptions: { maxParamLength: 1000 },
    // Errors the router raises before any route runs (too long a path, bad URL encoding).
    frameworkErrors: (err, _req, reply) => {
      void (reply as unknown as FastifyReply).code(400).send({
        error: { code: 'E_INVALID_INPUT', message: `Cannot accept the request: ${err.message}; fix the URL` },
      });
    },
  });
  // CRLs and certificate bundles travel as PEM documents, not JSON.
  app.addContentTypeParser('application/x-pem-file', { parseAs: 'string' }, (_req, body, done) => {
    done(null, body);
  });
  // Prepare's request with the VM folder's files as bytes (api/incoming-body.ts): the JSON goes on
  // to the route's schema, the bytes wait beside the request for its handler.
  const jsonParser = app.getDefaultJsonParser('error', 'error');
  app.addContentTypeParser(INCOMING_CONTENT_TYPE, { parseAs: 'buffer' }, (req, body, done) => {
    // The JSON line goes through the parser every JSON body does (it refuses prototype keys); that
    // parser answers before it returns.
    const parseJson = (text: string): unknown => {
      let out: { err: Error | null; value?: unknown } | null = null;
      void jsonParser(req, text, (err, value) => {
        out = { err, value };
      });
      const got = out as { err: Error | null; value?: unknown } | null;
      if (!got) throw new Error('the JSON parser did not answer at once');
      if (got.err) throw got.err;
      return got.value;
    };
    try {
      const { request, files } = decodeIncoming(body as Buffer, parseJson);
      sentFiles.set(req, files);
      done(null, request);
    } catch (err) {
      done(err as Error, undefined);
    }
  });
  o.tls.attach(app.server);
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  await app.register(swagger, {
    openapi: { info: { title: 'Ferry agent API', version: '1' }, components: {} },
    transform: jsonSchemaTransform,
  });

  // Who is calling: the verified client certificate says role and name.
  app.addHook('onRequest', (req, reply, done) => {
    void reply.header('x-request-id', req.id);
    const refused = checkPeer(req, o.domainId);
    if (refused) done(refused);
    else done();
  });

  // The audit trail: one hook sees every state-changing request's answer, whichever route
  // (or refusal before any route) gave it. Error answers are JSON bodies with error.code.
  const errorCodes = new WeakMap<FastifyRequest, string>();
  app.addHook('onSend', (req, reply, payload, done) => {
    if (reply.statusCode >= 400 && !READS.has(req.method) && typeof payload === 'string') {
      try {
        const code = (JSON.parse(payload) as { error?: { code?: unknown } }).error?.code;
        if (typeof code === 'string') errorCodes.set(req, code);
      } catch {
        // Not a Ferry error body: the status alone is recorded.
      }
    }
    done(null, payload);
  });
  app.addHook('onResponse', (req, reply, done) => {
    if (!READS.has(req.method)) {
      const action = req.routeOptions.config.action ?? null;
      const entry = {
        time: new Date().toISOString(),
        requestId: req.id,
        host: o.cfg.name,
        ...actorOf(req.peer ?? certificateOf(req), req.headers[ACTOR_HEADER], req.headers[ACTOR_ROLE_HEADER]),
        action,
        method: req.method,
        path: (req.url.split('?')[0] ?? '').slice(0, 1000),
        target: action ? targetOf(action, req.params, req.body) : null,
        outcome: outcomeOf(reply.statusCode),
        status: reply.statusCode,
        code: errorCodes.get(req) ?? null,
        ms: Math.round(reply.elapsedTime),
      };
      req.log.info({ audit: entry }, 'audit');
      void o.audit.append(entry);
    }
    done();
  });

  app.setErrorHandler((err, req, reply) => {
    if (hasZodFastifySchemaValidationErrors(err)) {
      return reply.code(400).send({ error: { code: 'E_INVALID_INPUT', message: validationMessage(err) } });
    }
    if (err instanceof FerryError) {
      const status = statusFor(err);
      if (status >= 500) req.log.error({ err }, 'request failed');
      return reply.code(status).send({ error: { code: err.code, message: err.message, context: err.context } });
    }
    const e = err as { statusCode?: number; message?: string; code?: string };
    if (e.statusCode && e.statusCode < 500) {
      return reply.code(e.statusCode).send({
        error: {
          code: 'E_INVALID_INPUT',
          message: `Cannot accept the request: ${e.message}; send a JSON body that matches the API`,
        },
      });
    }
    req.log.error({ err }, 'internal error');
    return reply.code(500).send({
      error: {
        code: 'E_INTERNAL',
        message: `Cannot serve the request: internal error (${e.message}); see the agent log`,
      },
    });
  });

  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({
      error: {
        code: 'E_ROUTE_NOT_FOUND',
        message: `Cannot serve ${req.method} ${req.url}: no such route; see /openapi.json`,
      },
    });
  });
  return app as unknown as FastifyInstance;
}
