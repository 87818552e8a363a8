// The console's one client. Agent actions go through the console server
// (/api/hosts/HOST/<action path>), which calls that host's agent with the admin
// certificate. URLs come from the shared action definitions and every answer is
// checked against the action's zod response schema. Errors keep the agent's code and
// message verbatim: the console shows them as they are.
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
      headers: { accept: 'application/json', ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
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
  const settled = await Promise.allSettled(hosts.map(fn));
  return settled.map((s, i) =>
    s.status === 'fulfilled' ? { host: hosts[i]!, data: s.value } : { host: hosts[i]!, error: s.reason as Error },
  );
}

export async function login(token: string): Promise<void> {
  await send('POST', '/api/login', { token }, { authCheck: false });
}

export async function logout(): Promise<void> {
  await send('POST', '/api/logout', undefined, { authCheck: false });
}

/** The hosts this console manages; throws ApiError with status 401 when not logged in. */
export async function session(signal?: AbortSignal): Promise<HostRef[]> {
  const data = await send('GET', '/api/session', undefined, { signal, authCheck: false });
  const hosts = (data as { hosts?: unknown }).hosts;
  if (!Array.isArray(hosts))
    throw new ApiError('E_BAD_RESPONSE', 'The console server sent a session without a host list', 200);
  return hosts.filter(
    (h): h is HostRef =>
      typeof h === 'object' &&
      h !== null &&
      typeof (h as HostRef).name === 'string' &&
      typeof (h as HostRef).endpoint === 'string',
  );
}

export function errorText(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}
