// The logged-in session: the hosts this console manages (from GET /api/session).
import { createContext, useContext } from 'react';
import type { HostRef } from './client.js';

export interface Session {
  hosts: HostRef[];
}

export const SessionContext = createContext<Session>({ hosts: [] });

export function useSession(): Session {
  return useContext(SessionContext);
}
