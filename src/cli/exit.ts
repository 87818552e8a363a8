// Exit codes are part of the CLI contract (shared/CLI.md).
import { FerryError } from '../errors.js';

export const EXIT = { ok: 0, failed: 1, usage: 2, incompatible: 3, notFound: 4, cancelled: 5 } as const;

export function exitCodeFor(err: unknown): number {
  if (!(err instanceof FerryError)) return EXIT.failed;
  if (err.code === 'E_INVALID_INPUT' || err.code === 'E_USAGE') return EXIT.usage;
  if (err.code === 'E_INCOMPATIBLE') return EXIT.incompatible;
  if (err.code === 'E_ABORTED' || err.code === 'E_CANCELLED') return EXIT.cancelled;
  if (err.code.endsWith('_NOT_FOUND')) return EXIT.notFound;
  return EXIT.failed;
}
