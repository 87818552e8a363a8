// Console sessions, in memory: a random id (the cookie) and a random CSRF token per
// session; each ends after an idle time, an absolute lifetime, a logout, or when its user's
// entry changes (removed, new password, new role). A user holds at most `perUser` sessions
// (a new login ends the oldest) and the console at most `total`, so logins cannot grow memory
// without bound. Open event streams belong to their session and are closed with it.
import crypto from 'node:crypto';
import type { ConsoleRole } from './roles.js';

export interface SessionLimits {
  idleMs: number;
  absoluteMs: number;
  perUser: number;
  total: number;
}

export const DEFAULT_LIMITS: SessionLimits = {
  idleMs: 30 * 60_000,
  absoluteMs: 12 * 3600_000,
  perUser: 5,
  total: 1000,
};

export interface Session {
  id: string;
  user: string;
  role: ConsoleRole;
  /** The user's `changedAt` when logged in: a later password change ends the session. */
  userStamp: string;
  csrf: string;
  createdAt: number;
  lastSeen: number;
  /** Closes what the session holds open (event streams). */
  closers: Set<() => void>;
}

export class SessionStore {
  private sessions = new Map<string, Session>();
  private timer: NodeJS.Timeout;

  constructor(
    readonly limits: SessionLimits = DEFAULT_LIMITS,
    private readonly now: () => number = Date.now,
  ) {
    // Pruning also runs on every lookup; the timer frees memory of sessions nobody uses again.
    this.timer = setInterval(() => this.prune(), Math.min(60_000, Math.max(1000, limits.idleMs / 2)));
    this.timer.unref();
  }

  create(user: string, role: ConsoleRole, userStamp: string): Session {
    this.prune();
    const mine = [...this.sessions.values()].filter((s) => s.user === user).sort((a, b) => a.createdAt - b.createdAt);
    for (const s of mine.slice(0, Math.max(0, mine.length - this.limits.perUser + 1))) this.end(s.id);
    if (this.sessions.size >= this.limits.total) {
      const oldest = [...this.sessions.values()].sort((a, b) => a.lastSeen - b.lastSeen)[0];
      if (oldest) this.end(oldest.id);
    }
    const t = this.now();
    const s: Session = {
      id: crypto.randomBytes(32).toString('base64url'),
      user,
      role,
      userStamp,
      csrf: crypto.randomBytes(32).toString('base64url'),
      createdAt: t,
      lastSeen: t,
      closers: new Set(),
    };
    this.sessions.set(s.id, s);
    return s;
  }

  /** The live session with this id, its idle clock restarted; undefined when absent or expired. */
  touch(id: string): Session | undefined {
    const s = this.sessions.get(id);
    if (!s) return undefined;
    if (this.expired(s)) {
      this.end(id);
      return undefined;
    }
    s.lastSeen = this.now();
    return s;
  }

  end(id: string): void {
    const s = this.sessions.get(id);
    if (!s) return;
    this.sessions.delete(id);
    for (const close of s.closers) close();
    s.closers.clear();
  }

  endUser(user: string): void {
    for (const s of [...this.sessions.values()]) if (s.user === user) this.end(s.id);
  }

  prune(): void {
    for (const s of [...this.sessions.values()]) if (this.expired(s)) this.end(s.id);
  }

  get size(): number {
    return this.sessions.size;
  }

  close(): void {
    clearInterval(this.timer);
    for (const id of [...this.sessions.keys()]) this.end(id);
  }

  private expired(s: Session): boolean {
    const t = this.now();
    return t - s.lastSeen >= this.limits.idleMs || t - s.createdAt >= this.limits.absoluteMs;
  }
}
