// The console's one client. Agent actions go through the console server
// (/api/hosts/HOST/<action path>), which calls that host's agent with its admin
// certificate when the user's role allows the action. URLs come from the shared action
// definitions and every answer is checked against the action's zod response schema.
// Errors keep the agent's code and message verbatim: the console shows them as they are.
// Every state-changing request carries the session's CSRF token (X-Ferry-CSRF), which the
// server gives with the session and a page from another site cannot read.
import { actionUrl, type Action, type ActionOutput, type CallInput } from '../../src/api/action.js';

export interface HostRef {
  name: string;
  endpoint: string;
}

export class ApiError extends Error {
  readonly code: string;
  readonly status: number;
  readonly context: Record<string, unknown>;
  constructor(code: string, message: string, status: number, context: Record<string, unknown> = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
    this.context = context;
  }
}

let unauthorized: () => void = () => {};
let csrf = '';
/** The session's CSRF token: a VM's screen sends it as a websocket subprotocol (no headers there). */
export function csrfToken(): string {
  return csrf;
}

/** Called when the console server says the session is gone (401). */
export function onUnauthorized(fn: () => void): void {
  unauthorized = fn;
}

interface ErrorShape {
  error?: { code?: string; message?: string; context?: Record<string, unknown> };
}

async function send(
  method: string,
  url: string,
  body: unknown,
  opts: { signal?: AbortSignal; authCheck?: boolean } = {},
): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(url, {
      method,
      credentials: 'same-origin',
      signal: opts.signal,
      headers: {
        accept: 'application/json',
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(method !== 'GET' && csrf ? { 'x-ferry-csrf': csrf } : {}),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    throw new ApiError(
      'E_CONSOLE_UNREACHABLE',
      `Cannot reach the console server (${method} ${url}): ${(err as Error).message}`,
      0,
    );
  }
  const text = await res.text();
  let data: unknown = text;
  if ((res.headers.get('content-type') ?? '').includes('json') && text) {
    try {
      data = JSON.parse(text);
    } catch {
      /* keep the text */
    }
  }
  if (!res.ok) {
    if (res.status === 401 && opts.authCheck !== false) unauthorized();
    const e = typeof data === 'object' && data !== null ? (data as ErrorShape).error : undefined;
    const fallback =
      typeof data === 'string' && data.trim() ? data.trim().slice(0, 500) : `HTTP ${res.status} from ${method} ${url}`;
    throw new ApiError(e?.code ?? `E_HTTP_${res.status}`, e?.message ?? fallback, res.status, e?.context ?? {});
  }
  return data;
}

/** Calls one agent action on HOST through the console server. */
export async function call<A extends Action>(
  host: string,
  a: A,
  input: CallInput<A>,
  opts: { signal?: AbortSignal } = {},
): Promise<ActionOutput<A>> {
  const i = input as { params?: Record<string, string | number>; query?: Record<string, unknown>; body?: unknown };
  let url = actionUrl(a, i.params ?? {});
  const q = Object.entries(i.query ?? {}).filter(([, v]) => v !== undefined && v !== null);
  if (q.length) url += '?' + new URLSearchParams(q.map(([k, v]) => [k, String(v)])).toString();
  const data = await send(a.method, `/api/hosts/${encodeURIComponent(host)}${url}`, i.body, opts);
  const parsed = a.response.safeParse(data);
  if (!parsed.success) {
    throw new ApiError(
      'E_BAD_RESPONSE',
      `Host '${host}' answered ${a.method} ${url} with data this console does not understand: ${parsed.error.message}`,
      200,
    );
  }
  return parsed.data as ActionOutput<A>;
}

export interface HostResult<T> {
  host: HostRef;
  data?: T;
  error?: Error;
}

/** Runs FN on every host at once; one host failing does not hide the others. */
export async function eachHost<T>(
  hosts: readonly HostRef[],
  fn: (h: HostRef) => Promise<T>,
): Promise<Array<HostResult<T>>> {
  return Promise.all(
    hosts.map(async (host) => {
      try {
        return { host, data: await fn(host) };
      } catch (err) {
        return { host, error: err as Error };
      }
    }),
  );
}

export interface SessionInfo {
  user: { name: string; role: string };
  hosts: HostRef[];
  /** Names of the agent actions this user's role may call (the server enforces it). */
  allowed: string[];
}

function sessionInfo(data: unknown): SessionInfo {
  const d = (typeof data === 'object' && data !== null ? data : {}) as Record<string, unknown>;
  const user = d.user as { name?: unknown; role?: unknown } | undefined;
  if (
    !Array.isArray(d.hosts) ||
    !Array.isArray(d.allowed) ||
    typeof d.csrf !== 'string' ||
    typeof user?.name !== 'string' ||
    typeof user.role !== 'string'
  )
    throw new ApiError('E_BAD_RESPONSE', 'The console server sent a session this app does not understand', 200);
  csrf = d.csrf;
  return {
    user: { name: user.name, role: user.role },
    allowed: d.allowed.filter((a): a is string => typeof a === 'string'),
    hosts: d.hosts.filter(
      (h): h is HostRef =>
        typeof h === 'object' &&
        h !== null &&
        typeof (h as HostRef).name === 'string' &&
        typeof (h as HostRef).endpoint === 'string',
    ),
  };
}

export async function login(name: string, password: string): Promise<SessionInfo> {
  return sessionInfo(await send('POST', '/api/login', { name, password }, { authCheck: false }));
}

export async function logout(): Promise<void> {
  try {
    await send('POST', '/api/logout', undefined, { authCheck: false });
  } finally {
    csrf = '';
  }
}

/** The logged-in user and the hosts this console manages; throws ApiError with status 401 when not logged in. */
export async function session(signal?: AbortSignal): Promise<SessionInfo> {
  return sessionInfo(await send('GET', '/api/session', undefined, { signal, authCheck: false }));
}

export function errorText(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}
