// The API's actions as the CLI calls them: their routes only (src/api/routes.ts). The client
// reads an action's method, path and body type, never its schemas (the agent checks what it
// is sent), so the CLI does not build the API's zod schemas (~40 ms of CPU per command,
// issue 17). test/unit/api-routes.test.ts keeps the table in step with the actions.
import type { actions as withSchemas } from '../api/actions.js';
import { routes } from '../api/routes.js';

export type Actions = typeof withSchemas;

/** Typed as the actions (for `AgentClient.call`'s input and output types); holds their routes. */
export const actions = routes as unknown as Actions;
