// What a command needs to talk to hosts (the context reader, the mutual-TLS client and the
// routes of the API's actions) is loaded when the command runs, not when the program is built:
// `ferry --help` or a command that talks to no host needs none of it.
// test/unit/cli-imports.test.ts guards which modules each command loads.
import type { Actions } from './actions.js';
import type { Clients, GlobalOpts } from './context.js';

export type { Actions } from './actions.js';

/** The API's actions as the CLI calls them (their routes: src/cli/actions.ts), loaded on first use. */
export async function loadActions(): Promise<Actions> {
  return (await import('./actions.js')).actions;
}

/** Runs a command body with clients for the hosts and the API's actions, always closing the clients. */
export async function withHosts<T>(o: GlobalOpts, fn: (c: Clients, actions: Actions) => Promise<T>): Promise<T> {
  const [{ withClients }, actions] = await Promise.all([import('./context.js'), loadActions()]);
  return withClients(o, (c) => fn(c, actions));
}
