// What each console role may ask an agent for: the proxy forwards a request only when it
// matches an action of this table (method and path) and the user's role is at least the
// action's minimum. Everything else — the peer routes, /metrics, /openapi.json, an action
// added to src/api later — is refused. The table is exhaustive over the agent's actions, so
// a new action does not type-check until someone decides who may call it from a browser.
import { actions, type Actions } from '../api/actions.js';
import { CONSOLE_ROLES, type ConsoleRole } from './role-names.js';

export { CONSOLE_ROLES, type ConsoleRole };

/** The least role that may call each action through the console. */
export const MIN_ROLE: { readonly [K in keyof Actions]: ConsoleRole } = {
  hostShow: 'viewer',
  hostSet: 'admin',
  // The domain's PKI is managed with the CLI; through a browser only an admin may touch it.
  domainTls: 'admin',
  domainCrlPut: 'admin',
  domainRenewal: 'admin',
  domainCertificatePut: 'admin',
  vmList: 'viewer',
  vmCreate: 'admin',
  vmShow: 'viewer',
  vmStart: 'operator',
  vmStop: 'operator',
  vmPause: 'operator',
  vmResume: 'operator',
  // The CPU model decides where the VM may run: an admin's call, like creating one.
  vmSet: 'admin',
  vmRemove: 'admin',
  // A guest's serial output can show what its users typed; viewers only see inventory.
  vmConsole: 'operator',
  // The screen shows what the console shows.
  vmScreenshot: 'operator',
  vmImport: 'admin',
  checkpointList: 'viewer',
  checkpointNew: 'operator',
  // Applying throws away the running state unless kept; removing merges data: an admin's call.
  checkpointApply: 'admin',
  checkpointRemove: 'admin',
  switchList: 'viewer',
  switchCreate: 'admin',
  switchRemove: 'admin',
  poolList: 'viewer',
  // The Move wizard browses the destination's pools; only those who may move need it.
  poolBrowse: 'operator',
  poolAdd: 'admin',
  poolGrant: 'admin',
  poolRevoke: 'admin',
  clusterStatus: 'viewer',
  clusterDrain: 'operator',
  clusterPause: 'operator',
  clusterResume: 'operator',
  clusterAddVm: 'admin',
  clusterRemoveVm: 'admin',
  clusterLimits: 'admin',
  clusterJoin: 'admin',
  compare: 'operator',
  migrationCreate: 'operator',
  storageMove: 'operator',
  migrationList: 'viewer',
  migrationShow: 'viewer',
  migrationCancel: 'operator',
  // It names every user and what they touched.
  auditList: 'admin',
};

/** A VM's live screen (the agent's websocket /v1/vms/:name/vnc) follows its screenshot. */
export const SCREEN_MIN_ROLE: ConsoleRole = MIN_ROLE.vmScreenshot;

/** The agent's event stream: every role follows it (it is how pages stay current). */
export const EVENTS_PATH = '/v1/events';

export function roleAtLeast(role: ConsoleRole, min: ConsoleRole): boolean {
  return CONSOLE_ROLES.indexOf(role) >= CONSOLE_ROLES.indexOf(min);
}

interface Route {
  name: keyof Actions;
  method: string;
  re: RegExp;
  min: ConsoleRole;
}

// A path parameter is one non-empty segment; the whole path must match (no prefix matches).
const ROUTES: readonly Route[] = (Object.keys(MIN_ROLE) as Array<keyof Actions>).map((name) => ({
  name,
  method: actions[name].method,
  re: new RegExp('^' + actions[name].path.replace(/:[A-Za-z]+/g, '[^/]+') + '$'),
  min: MIN_ROLE[name],
}));

export type RouteDecision =
  { ok: true; action: keyof Actions | 'events' } | { ok: false; status: 403 | 404; reason: string };

/**
 * May a ROLE send METHOD PATH (path without the query) to an agent? PATH must already be
 * checked for dot segments and encoded slashes (see `cleanAgentPath`).
 */
export function decide(role: ConsoleRole, method: string, path: string): RouteDecision {
  if (method === 'GET' && path === EVENTS_PATH) return { ok: true, action: 'events' };
  if (path.startsWith('/v1/peer/'))
    return { ok: false, status: 403, reason: 'the peer routes are for hosts only and never go through the console' };
  const matches = ROUTES.filter((r) => r.re.test(path));
  const route = matches.find((r) => r.method === method);
  if (!route)
    return {
      ok: false,
      status: matches.length ? 403 : 404,
      reason: matches.length
        ? `${method} is not allowed on ${path} through the console`
        : `${path} is not an agent action the console serves`,
    };
  if (!roleAtLeast(role, route.min))
    return {
      ok: false,
      status: 403,
      reason: `${actions[route.name].name} needs the ${route.min} role and you are ${role}`,
    };
  return { ok: true, action: route.name };
}

/** The action names a role may call (the web app hides what it cannot do). */
export function allowedActions(role: ConsoleRole): string[] {
  return ROUTES.filter((r) => roleAtLeast(role, r.min)).map((r) => actions[r.name].name);
}

/**
 * The agent path of a proxied URL, or null when it is not a plain path: dot segments,
 * empty segments, encoded slashes or backslashes, or control characters could make the
 * agent route it elsewhere than the table says.
 */
export function cleanAgentPath(pathname: string): string | null {
  const segments = pathname.slice(1).split('/');
  for (const s of segments) {
    if (!s) return null;
    let d: string;
    try {
      d = decodeURIComponent(s);
    } catch {
      return null;
    }
    if (d === '.' || d === '..' || d.includes('/') || d.includes('\\')) return null;
    for (let i = 0; i < d.length; i++) if (d.charCodeAt(i) < 0x20 || d.charCodeAt(i) === 0x7f) return null;
    if (!/^[A-Za-z0-9._~%!$&'()*+,;=:@-]+$/.test(s)) return null;
  }
  return pathname;
}
