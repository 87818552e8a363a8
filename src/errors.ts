// One error type for the whole control plane: a stable `code` that scripts and the
// API match on, context fields for logs, a `cause`, and a message that says
// "Cannot X: Y; do Z".

export type ErrorContext = Record<string, unknown>;

export class FerryError extends Error {
  readonly code: string;
  readonly context: ErrorContext;
  /** A user error (bad input, not found): print the message, never the stack. */
  readonly userError: boolean;

  constructor(
    code: string,
    message: string,
    opts: { context?: ErrorContext; cause?: unknown; userError?: boolean } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.context = opts.context ?? {};
    this.userError = opts.userError ?? false;
  }

  toJSON(): { code: string; message: string; context: ErrorContext } {
    return { code: this.code, message: this.message, context: this.context };
  }
}

/** Bad input: a flag, a field of a spec, an API body. Nothing was changed. */
export class InvalidInputError extends FerryError {
  constructor(message: string, context: ErrorContext = {}, cause?: unknown) {
    super('E_INVALID_INPUT', message, { context, cause, userError: true });
  }
}

export class NotFoundError extends FerryError {
  constructor(code: string, message: string, context: ErrorContext = {}) {
    super(code, message, { context, userError: true });
  }
}

export class TimeoutError extends FerryError {
  constructor(what: string, ms: number, context: ErrorContext = {}) {
    super(
      'E_TIMEOUT',
      `Cannot ${what}: no answer within ${ms} ms; ` +
        'check that the process is alive and not stopped, or raise the timeout',
      {
        context: { ...context, timeoutMs: ms },
      },
    );
  }
}

export class AbortedError extends FerryError {
  constructor(what: string, cause?: unknown) {
    super('E_ABORTED', `Cannot ${what}: the operation was cancelled`, { cause });
  }
}

/**
 * Any thrown or rejected value as an Error, for passing it on with reject(): an Error is
 * returned unchanged, anything else is wrapped with its string form as the message.
 */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** Message of any thrown value, for wrapping. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
