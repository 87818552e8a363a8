// The one typed client of the agent API (CLI, lab, later the console and peer agents):
// mutual TLS with a domain certificate; errors come back as FerryErrors with the agent's
// stable code and message.
import https from 'node:https';
import fs from 'node:fs';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { FerryError, TimeoutError, AbortedError } from '../errors.js';
import { actionUrl, type Action, type ActionOutput, type CallInput } from './action.js';
import { tlsServerName } from '../util/tls-name.js';
import { emptyDefaultRootStore } from '../util/root-store.js';
import { parsePlain } from '../util/plain-text.js';
import { CLIENT_IDLE_MS } from './keep-alive.js';

export interface Credentials {
  ca: string;
  cert: string;
  key: string;
  /** The domain's revocation list, when the holder has one: a revoked peer fails the handshake. */
  crl?: string;
}

export interface ClientOptions {
  /** https://ADDR:PORT */
  endpoint: string;
  /** The host's name: its certificate must say so. */
  host: string;
  credentials: Credentials;
}

export class AgentUnreachableError extends FerryError {
  constructor(host: string, endpoint: string, cause: unknown) {
    const msg = cause instanceof Error ? cause.message : String(cause);
    super(
      'E_AGENT_UNREACHABLE',
      `Cannot reach the agent of host '${host}' at ${endpoint}: ${msg}; ` +
        "check that it runs ('ferry lab status' in a lab)",
      { context: { host, endpoint }, cause },
    );
  }
}

interface TlsFiles {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  crl?: Buffer;
}

/** A caller-given content type applies to a string or bytes sent as they are; anything else is JSON. */
function payloadOf(body: unknown, contentType: string | undefined): { payload?: Buffer; rawType?: string } {
  if (body === undefined) return {};
  if (contentType !== undefined && Buffer.isBuffer(body)) return { payload: body, rawType: contentType };
  if (contentType !== undefined && typeof body === 'string')
    return { payload: Buffer.from(body), rawType: contentType };
  return { payload: Buffer.from(JSON.stringify(body)) };
}

/**
 * TLS parameters parsed once for every connection of every client holding the same files'
 * contents: given as `ca`/`cert`/`key`, Node parses them again for each connection (~2 ms of
 * CPU each). Made at the first connection, as Node did: unreadable PEM fails the request, not
 * the client's construction. A renewed certificate or CRL has other contents: a new context.
 */
const contexts = new Map<string, tls.SecureContext>();
function secureContextOf(f: TlsFiles): tls.SecureContext {
  const id = [f.ca, f.cert, f.key, f.crl ?? ''].map((b) => b.toString('base64')).join(' ');
  let ctx = contexts.get(id);
  if (!ctx) {
    emptyDefaultRootStore();
    ctx = tls.createSecureContext(f);
    // Credentials change rarely (a renewal, a new CRL): the newest few are enough.
    if (contexts.size >= 8) contexts.delete(contexts.keys().next().value ?? '');
    contexts.set(id, ctx);
  }
  return ctx;
}

/** An https.Agent whose connections use the shared context of its files (its sessions kept as before). */
class SharedContextAgent extends https.Agent {
  constructor(
    private readonly files: TlsFiles,
    o: https.AgentOptions,
  ) {
    super({ ...o, ...files });
  }

  override createConnection(
    options: https.RequestOptions,
    callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex | null | undefined {
    return super.createConnection(Object.assign({}, options, { secureContext: secureContextOf(this.files) }), callback);
  }
}

export class AgentClient {
  readonly host: string;
  readonly endpoint: string;
  private agent: https.Agent;

  constructor(o: ClientOptions) {
    this.host = o.host;
    this.endpoint = o.endpoint.replace(/\/$/, '');
    const files: TlsFiles = {
      ca: fs.readFileSync(o.credentials.ca),
      cert: fs.readFileSync(o.credentials.cert),
      key: fs.readFileSync(o.credentials.key),
      ...(o.credentials.crl && fs.existsSync(o.credentials.crl) ? { crl: fs.readFileSync(o.credentials.crl) } : {}),
    };
    this.agent = new SharedContextAgent(files, {
      keepAlive: true,
      // An idle kept connection is closed by us before the agent's server closes it (keep-alive.ts).
      // (The timeout only destroys free sockets; a request in progress is not cut by it.)
      timeout: CLIENT_IDLE_MS,
      maxSockets: 8,
      servername: tlsServerName(new URL(this.endpoint).hostname),
      // The address may be anything (lab: 127.0.0.1); the certificate must name the host we meant.
      checkServerIdentity: (_name, cert) => {
        const cn = Array.isArray(cert.subject.CN) ? cert.subject.CN[0] : cert.subject.CN;
        return cn === o.host ? undefined : new Error(`the certificate is for '${cn}', not '${o.host}'`);
      },
    });
  }

  close(): void {
    this.agent.destroy();
  }

  async call<A extends Action>(
    a: A,
    input: CallInput<A>,
    opts: { signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<ActionOutput<A>> {
    const i = input as { params?: Record<string, string>; query?: Record<string, unknown>; body?: unknown };
    let url = actionUrl(a, i.params ?? {});
    const q = Object.entries(i.query ?? {}).filter(([, v]) => v !== undefined);
    if (q.length) url += '?' + new URLSearchParams(q.map(([k, v]) => [k, String(v)])).toString();
    const res = await this.request(a.method, url, i.body, {
      ...opts,
      ...(a.contentType ? { contentType: a.contentType } : {}),
    });
    return res as ActionOutput<A>;
  }

  /** Raw request; JSON in, JSON or text out. */
  request(
    method: string,
    url: string,
    body: unknown,
    opts: { signal?: AbortSignal; timeoutMs?: number; contentType?: string } = {},
  ): Promise<unknown> {
    const timeoutMs = opts.timeoutMs ?? 120_000;
    const what = `call ${method} ${url} on host '${this.host}'`;
    return new Promise((resolve, reject) => {
      if (opts.signal?.aborted) {
        reject(new AbortedError(what, opts.signal.reason));
        return;
      }
      const { payload, rawType } = payloadOf(body, opts.contentType);
      const req = https.request(
        this.endpoint + url,
        {
          method,
          agent: this.agent,
          signal: opts.signal,
          headers: {
            accept: 'application/json',
            ...(payload ? { 'content-type': rawType ?? 'application/json', 'content-length': payload.length } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            clearTimeout(timer);
            const text = Buffer.concat(chunks).toString('utf8');
            const isJson = (res.headers['content-type'] ?? '').includes('json');
            let data: unknown = text;
            if (isJson) {
              try {
                data = parsePlain(text);
              } catch {
                /* leave as text */
              }
            }
            if ((res.statusCode ?? 500) >= 400) {
              type WireError = { error?: { code?: string; message?: string; context?: Record<string, unknown> } };
              const e = (data as WireError | null)?.error;
              const err = FerryError.fromWire(e, `Cannot ${what}: HTTP ${res.statusCode ?? 500}`);
              Object.assign(err.context, { host: this.host, status: res.statusCode });
              reject(err);
              return;
            }
            resolve(data);
          });
          res.on('error', (err) => {
            clearTimeout(timer);
            reject(new AgentUnreachableError(this.host, this.endpoint, err));
          });
        },
      );
      const timer = setTimeout(() => {
        req.destroy();
        reject(new TimeoutError(what, timeoutMs, { host: this.host }));
      }, timeoutMs);
      req.on('error', (err) => {
        clearTimeout(timer);
        if (opts.signal?.aborted) reject(new AbortedError(what, opts.signal.reason));
        else reject(new AgentUnreachableError(this.host, this.endpoint, err));
      });
      req.end(payload);
    });
  }

  /**
   * Forwards one HTTP request to the agent and pipes its answer back unchanged (the web
   * console's proxy: the browser never holds a certificate). `headers` go to the agent as
   * they are (the console's X-Ferry-Actor, an event stream's Last-Event-ID).
   */
  forward(
    method: string,
    url: string,
    body: Buffer | undefined,
    contentType: string | undefined,
    res: import('node:http').ServerResponse,
    signal?: AbortSignal,
    headers: Record<string, string> = {},
  ): Promise<void> {
    return new Promise((resolve) => {
      const req = https.request(
        this.endpoint + url,
        {
          method,
          agent: this.agent,
          signal,
          headers: {
            ...headers,
            accept: 'application/json, text/event-stream, text/plain',
            ...(body?.length
              ? { 'content-type': contentType ?? 'application/json', 'content-length': body.length }
              : {}),
          },
        },
        (up) => {
          const headers: Record<string, string> = {};
          for (const h of ['content-type', 'cache-control']) if (up.headers[h]) headers[h] = String(up.headers[h]);
          res.writeHead(up.statusCode ?? 502, headers);
          up.pipe(res);
          up.on('end', () => resolve());
          up.on('error', () => resolve());
          res.on('close', () => {
            up.destroy();
            resolve();
          });
        },
      );
      req.on('error', (err) => {
        if (!res.headersSent) {
          res.writeHead(502, { 'content-type': 'application/json' });
          res.end(
            JSON.stringify({
              error: {
                code: 'E_AGENT_UNREACHABLE',
                message: new AgentUnreachableError(this.host, this.endpoint, err).message,
              },
            }),
          );
        } else res.end();
        resolve();
      });
      req.end(body?.length ? body : undefined);
    });
  }

  /**
   * A websocket to the agent (a VM's serial console or display), over the same mutual TLS.
   * `ws` loads here, on first use: most commands never open one.
   */
  async websocket(url: string, headers: Record<string, string> = {}): Promise<WebSocket> {
    const { WebSocket } = await import('ws');
    return new WebSocket(this.endpoint.replace(/^https:/, 'wss:') + url, {
      agent: this.agent,
      headers,
      handshakeTimeout: 15_000,
      maxPayload: 16 * 1024 * 1024,
    });
  }

  /** A GET whose answer is bytes (a screenshot); errors as for `request`. */
  async bytes(url: string, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<Buffer> {
    const what = `download ${url} from host '${this.host}'`;
    return new Promise((resolve, reject) => {
      const req = https.request(
        this.endpoint + url,
        { method: 'GET', agent: this.agent, signal: opts.signal },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            clearTimeout(timer);
            const body = Buffer.concat(chunks);
            if ((res.statusCode ?? 500) < 400) {
              resolve(body);
              return;
            }
            let e: { code?: string; message?: string } | undefined;
            try {
              e = (parsePlain(body.toString('utf8')) as { error?: typeof e }).error;
            } catch {
              /* not JSON */
            }
            reject(FerryError.fromWire(e, `Cannot ${what}: HTTP ${res.statusCode ?? 500}`));
          });
          res.on('error', (err) => reject(new AgentUnreachableError(this.host, this.endpoint, err)));
        },
      );
      const timer = setTimeout(() => {
        req.destroy();
        reject(new TimeoutError(what, opts.timeoutMs ?? 60_000, { host: this.host }));
      }, opts.timeoutMs ?? 60_000);
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(
          opts.signal?.aborted
            ? new AbortedError(what, opts.signal.reason)
            : new AgentUnreachableError(this.host, this.endpoint, err),
        );
      });
      req.end();
    });
  }

  /**
   * A streaming GET (console --follow, events): calls onData for each chunk until the agent
   * ends it or it is aborted; onOpen once the agent answered (for events: it is subscribed).
   */
  stream(
    url: string,
    onData: (chunk: string) => void,
    opts: { signal?: AbortSignal; onOpen?: () => void } = {},
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      const req = https.request(
        this.endpoint + url,
        { method: 'GET', agent: this.agent, signal: opts.signal },
        (res) => {
          if ((res.statusCode ?? 500) >= 400) {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => {
              let e: { code?: string; message?: string } | undefined;
              try {
                e = (parsePlain(Buffer.concat(chunks).toString()) as { error?: typeof e }).error;
              } catch {
                /* text */
              }
              reject(FerryError.fromWire(e, `HTTP ${res.statusCode ?? 500}`));
            });
            return;
          }
          res.setEncoding('utf8');
          res.on('data', onData);
          res.on('end', resolve);
          res.on('close', () => resolve());
          res.on('error', () => resolve());
          opts.onOpen?.();
        },
      );
      req.on('error', (err) =>
        opts.signal?.aborted ? resolve() : reject(new AgentUnreachableError(this.host, this.endpoint, err)),
      );
      req.end();
    });
  }
}
