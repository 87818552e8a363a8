// The audit trail: one JSON line per state-changing request this agent accepted or refused —
// who asked (the certificate's name, or the console user the console's admin certificate
// speaks for), with what role, which action on which target, and the outcome. The HTTP
// layer writes it from one hook (server.ts); `ferry audit` reads it through GET /v1/audit.
// Lines hold names and codes only, never a body: specs, files and keys are not logged.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import readline from 'node:readline';
import { FerryError } from '../errors.js';
import { AuditEntry, type AuditQuery } from '../api/schemas.js';

export type { AuditEntry };

/** Who made a request, as the audit trail names them. */
export interface AuditActor {
  who: string;
  role: string;
  via: AuditEntry['via'];
  /** role:name of the certificate that made the TLS connection. */
  certificate: string;
}

/** The console user an admin certificate speaks for: `console:NAME` (server.ts of the console). */
const CONSOLE_ACTOR_RE = /^console:([A-Za-z0-9][A-Za-z0-9._-]{0,62})$/;
const CONSOLE_ROLES = new Set(['viewer', 'operator', 'admin']);

/**
 * The actor of a request. Only an admin certificate (the console's credential) may name a
 * console user: anyone holding it could do everything as themselves anyway; a host
 * certificate's claim is ignored and it is recorded as the host it is.
 */
export function actorOf(
  cert: { role: string; name: string } | null,
  actorHeader: unknown,
  roleHeader: unknown,
): AuditActor {
  if (!cert) return { who: 'unknown', role: 'unknown', via: 'certificate', certificate: 'unknown' };
  const certificate = `${cert.role}:${cert.name}`;
  const m = cert.role === 'admin' && typeof actorHeader === 'string' ? CONSOLE_ACTOR_RE.exec(actorHeader) : null;
  if (m?.[1]) {
    const role = typeof roleHeader === 'string' && CONSOLE_ROLES.has(roleHeader) ? roleHeader : 'unknown';
    return { who: m[1], role, via: 'console', certificate };
  }
  return { who: cert.name, role: cert.role, via: 'certificate', certificate };
}

const MAX_TARGET = 200;
/** Actions whose `:name` is not named after the action's group. */
const NAME_KIND: Record<string, string> = {
  'cluster.drain': 'node',
  'cluster.resume': 'node',
  'cluster.remove-vm': 'vm',
};

function short(v: unknown): string | undefined {
  return typeof v === 'string' && v.length > 0 && v.length <= MAX_TARGET ? v : undefined;
}

function field(o: unknown, k: string): unknown {
  return o !== null && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined;
}

/**
 * What a request acts on, as `kind:name` (vm:web1, move:ID, node:b, pool:shared), from its
 * path parameters and the identifying fields of its (validated) body; null when it names
 * nothing (host settings, the domain's certificate).
 */
export function targetOf(action: string, params: unknown, body: unknown): string | null {
  const id = short(field(params, 'id'));
  if (id) return `move:${id}`;
  const group = action.split('.')[0] ?? action;
  const name = short(field(params, 'name'));
  if (name) return `${NAME_KIND[action] ?? group}:${name}`;
  const vm = short(field(body, 'vm')) ?? short(field(field(body, 'spec'), 'name'));
  if (vm) return `vm:${vm}`;
  const bodyName = short(field(body, 'name'));
  return bodyName ? `${group}:${bodyName}` : null;
}

export function outcomeOf(status: number): AuditEntry['outcome'] {
  if (status < 400) return 'ok';
  return status < 500 ? 'refused' : 'failed';
}

/** The line for one request (without the newline). */
export function auditLine(e: AuditEntry): string {
  return JSON.stringify(AuditEntry.parse(e));
}

// O_APPEND: every write goes to the file's end as it is then; no link is followed.
const APPEND = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_APPEND | fs.constants.O_NOFOLLOW;

export interface AuditLogOptions {
  /** Called when a line cannot be written (the request itself has been answered already). */
  onError?: (err: unknown) => void;
}

/**
 * Appends lines to FILE. Each line is one write to a file opened with O_APPEND for that
 * write, so rotation may copy-and-truncate the file (logrotate copytruncate) or move it
 * away (logrotate's default): the next line goes to the end of whatever FILE is then.
 */
export class AuditLog {
  private queue: Promise<void> = Promise.resolve();

  constructor(
    readonly file: string,
    private readonly o: AuditLogOptions = {},
  ) {}

  append(e: AuditEntry): Promise<void> {
    const line = auditLine(e) + '\n';
    // Chained, so lines keep the order the responses were sent in.
    this.queue = this.queue
      .then(() => fsp.appendFile(this.file, line, { flag: APPEND, mode: 0o600 }))
      .catch((err: unknown) => this.o.onError?.(err));
    return this.queue;
  }

  /** Resolves when every line appended so far is written. */
  flush(): Promise<void> {
    return this.queue;
  }

  /**
   * The entries matching Q, oldest first: the last `limit` of them. Reads FILE.1 (the
   * previous file after a rotation, uncompressed) and FILE. Lines that are not entries (a
   * line cut by a crash, a hand edit) are skipped and counted.
   */
  async read(q: AuditQuery, signal?: AbortSignal): Promise<{ entries: AuditEntry[]; skipped: number }> {
    const match = auditFilter(q);
    const out: AuditEntry[] = [];
    let skipped = 0;
    for (const file of [`${this.file}.1`, this.file]) {
      let stream: fs.ReadStream;
      try {
        const fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
        stream = fh.createReadStream({ encoding: 'utf8', signal });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw new FerryError(
          'E_AUDIT_UNREADABLE',
          `Cannot read the audit log ${file}: ${(err as Error).message}; check the file and its permissions`,
          { context: { file }, cause: err },
        );
      }
      const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
      for await (const line of lines) {
        if (!line) continue;
        const e = parseAuditLine(line);
        if (!e) skipped++;
        else if (match(e)) {
          out.push(e);
          // Keeps memory bounded on a long file: only the newest `limit` are kept.
          if (out.length > q.limit * 2) out.splice(0, out.length - q.limit);
        }
      }
    }
    return { entries: out.slice(-q.limit), skipped };
  }
}

export function parseAuditLine(line: string): AuditEntry | null {
  try {
    const r = AuditEntry.safeParse(JSON.parse(line));
    return r.success ? r.data : null;
  } catch {
    return null;
  }
}

/**
 * The reader's filters: entries at or after `since`, and by `who` — the person or host
 * (`who`) or the certificate's name (so the console's certificate finds all its users).
 */
export function auditFilter(q: Pick<AuditQuery, 'since' | 'who'>): (e: AuditEntry) => boolean {
  const since = q.since ? Date.parse(q.since) : null;
  return (e) => {
    if (since !== null && !(Date.parse(e.time) >= since)) return false;
    if (q.who !== undefined && e.who !== q.who && e.certificate.split(':').slice(1).join(':') !== q.who) return false;
    return true;
  };
}
