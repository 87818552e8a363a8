// One error type for the whole control plane: a stable `code` from the registry
// (error-codes.ts) that scripts and the API match on, context fields for logs, a `cause`,
// and a message that says "Cannot X: Y; do Z".
import { errorInfo, isErrorCode, type ErrorCode, type ErrorInfo } from './error-codes.js';

export type { ErrorCode } from './error-codes.js';
export type ErrorContext = Record<string, unknown>;

export class FerryError extends Error {
  readonly code: ErrorCode;
  readonly context: ErrorContext;

  constructor(code: ErrorCode, message: string, opts: { context?: ErrorContext; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.context = opts.context ?? {};
  }

  /** The registry's entry for this code: HTTP status, exit code, retryable. */
  get info(): ErrorInfo {
    return errorInfo(this.code);
  }

  /** A user error (bad input, not found, a conflict): print the message, never the stack. */
  get userError(): boolean {
    return this.info.status < 500;
  }

  toJSON(): { code: string; message: string; context: ErrorContext } {
    return { code: this.code, message: this.message, context: this.context };
  }

  /** An error a peer answered with; a code this version does not know stays in the context. */
  static fromWire(
    e: { code?: string; message?: string; context?: ErrorContext } | undefined,
    fallback: string,
  ): FerryError {
    const code = e?.code && isErrorCode(e.code) ? e.code : 'E_HTTP';
    const context = { ...(e?.context ?? {}), ...(e?.code && code !== e.code ? { remoteCode: e.code } : {}) };
    return new FerryError(code, e?.message ?? fallback, { context });
  }
}

/** Bad input: a flag, a field of a spec, an API body. Nothing was changed. */
export class InvalidInputError extends FerryError {
  constructor(message: string, context: ErrorContext = {}, cause?: unknown) {
    super('E_INVALID_INPUT', message, { context, cause });
  }
}

export class NotFoundError extends FerryError {
  constructor(code: ErrorCode, message: string, context: ErrorContext = {}) {
    super(code, message, { context });
  }
}

export class TimeoutError extends FerryError {
  constructor(what: string, ms: number, context: ErrorContext = {}) {
    super(
      'E_TIMEOUT',
      `Cannot ${what}: no answer within ${ms} ms; ` +
        'check that the process is alive and not stopped, or raise the timeout',
      { context: { ...context, timeoutMs: ms } },
    );
  }
}

export class AbortedError extends FerryError {
  constructor(what: string, cause?: unknown) {
    super('E_ABORTED', `Cannot ${what}: the operation was cancelled`, { cause });
  }
}

/** Message of any thrown value, for wrapping. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The code of any thrown value (E_INTERNAL for what is not a FerryError). */
export function codeOf(err: unknown): ErrorCode {
  return err instanceof FerryError ? err.code : 'E_INTERNAL';
}

/**
 * Any thrown or rejected value as an Error, for passing it on with reject(): an Error is
 * returned unchanged, anything else is wrapped with its string form as the message.
 */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
