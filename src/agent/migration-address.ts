// The address a destination tells the source to connect to. An agent that listens on every
// address (0.0.0.0, the default of an installed host) and has no migration address must not
// answer "connect to 0.0.0.0" (on the source that means the source itself): it answers with
// its own address the source's request arrived on, which the source can reach.
import { FerryError } from '../errors.js';

export function isWildcard(address: string): boolean {
  return address === '0.0.0.0' || address === '::' || address === '[::]';
}

/**
 * `configured`: the agent's migration address (or an address of its migration networks);
 * `localAddress`: this host's end of the request's connection (`req.socket.localAddress`).
 */
export function advertisedMigrationAddress(configured: string, localAddress: string | undefined, host: string): string {
  if (!isWildcard(configured)) return configured;
  // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
  const local = localAddress?.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, '');
  if (!local || isWildcard(local))
    throw new FerryError(
      'E_MIGRATION_ADDRESS',
      `Cannot receive a migration on host '${host}': it listens on ${configured} and has no migration address; ` +
        'set "migrationAddress" in /etc/ferry/agent.json (or --migration-address) to the address sources connect to',
      { context: { configured, localAddress } },
    );
  return local;
}
