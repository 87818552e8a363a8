// Exit codes are part of the CLI contract (shared/CLI.md); each error code's is in the registry.
import { FerryError } from '../errors.js';
import { EXIT } from '../error-codes.js';
import type { Writable } from 'node:stream';

export { EXIT } from '../error-codes.js';

export function exitCodeFor(err: unknown): number {
  return err instanceof FerryError ? err.info.exit : EXIT.failed;
}

/**
 * Calls `exit` once everything written to `streams` has been handed on: pipes are written
 * asynchronously on POSIX, and what is still queued must reach the reader, however slow (a
 * write's callback comes after every earlier write's; a reader gone is an EPIPE, main.ts).
 */
export async function exitWhenWritten(
  streams: Array<Pick<Writable, 'writableLength' | 'write'>>,
  exit: () => void,
): Promise<void> {
  await Promise.all(
    streams
      .filter((s) => s.writableLength > 0)
      .map((s) => new Promise<void>((resolve) => s.write('', () => resolve()))),
  );
  exit();
}
