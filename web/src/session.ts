// The logged-in session: who is logged in, what the role may do, and the hosts this console
// manages (from GET /api/session or the login).
import { createContext, useContext } from 'react';
import type { Action } from '../../src/api/action.js';
import type { HostRef } from './client.js';

export interface Session {
  user: { name: string; role: string };
  hosts: HostRef[];
  allowed: readonly string[];
}

export const SessionContext = createContext<Session>({ user: { name: '', role: '' }, hosts: [], allowed: [] });

export function useSession(): Session {
  return useContext(SessionContext);
}

/** May this user call the action? (Buttons for what the role cannot do are not shown.) */
export function useCan(): (a: Pick<Action, 'name'>) => boolean {
  const { allowed } = useSession();
  return (a) => allowed.includes(a.name);
}
