// Exit codes are part of the CLI contract (shared/CLI.md); each error code's is in the registry.
import { FerryError } from '../errors.js';
import { EXIT } from '../error-codes.js';

export { EXIT } from '../error-codes.js';

export function exitCodeFor(err: unknown): number {
  return err instanceof FerryError ? err.info.exit : EXIT.failed;
}
