// Session gate (login page until GET /api/session answers) and the page shell.
import { useEffect, useState } from 'react';
import { ApiError, errorText, logout, onUnauthorized, session, type SessionInfo } from './client.js';
import { SessionContext } from './session.js';
import { closeAll, onStreamEnded } from './events.js';
import { LoginPage } from './LoginPage.js';
import { NavBar, type Page } from './NavBar.js';
import { HostsPage } from './HostsPage.js';
import { VmsPage } from './VmsPage.js';
import { MigrationsPage } from './MigrationsPage.js';
import { ClusterPage } from './ClusterPage.js';

const PAGES: readonly Page[] = ['vms', 'hosts', 'migrations', 'cluster'];

function pageFromHash(): Page {
  const p = window.location.hash.replace(/^#\/?/, '');
  return (PAGES as readonly string[]).includes(p) ? (p as Page) : 'vms';
}

type Auth = { kind: 'checking' } | { kind: 'out'; error?: string } | { kind: 'in'; session: SessionInfo };

export function App() {
  const [auth, setAuth] = useState<Auth>({ kind: 'checking' });
  const [page, setPage] = useState<Page>(pageFromHash);

  useEffect(() => {
    const ended = (): void => {
      closeAll();
      setAuth({ kind: 'out', error: 'Your session has ended; log in again.' });
    };
    onUnauthorized(ended);
    // The console closed an event stream: if the session is gone, the login page says so.
    onStreamEnded(() => {
      session().catch((err: unknown) => {
        if (err instanceof ApiError && err.status === 401) ended();
      });
    });
    session().then(
      (s) => setAuth({ kind: 'in', session: s }),
      (err: unknown) =>
        setAuth(
          err instanceof ApiError && err.status === 401 ? { kind: 'out' } : { kind: 'out', error: errorText(err) },
        ),
    );
    const onHash = (): void => setPage(pageFromHash());
    window.addEventListener('hashchange', onHash);
    return () => window.removeEventListener('hashchange', onHash);
  }, []);

  const doLogout = async (): Promise<void> => {
    try {
      await logout();
    } catch {
      /* the session is dropped either way */
    }
    closeAll();
    setAuth({ kind: 'out' });
  };

  if (auth.kind === 'checking')
    return (
      <div className="splash" data-testid="loading">
        Loading…
      </div>
    );
  if (auth.kind === 'out')
    return <LoginPage error={auth.error} onLoggedIn={(s) => setAuth({ kind: 'in', session: s })} />;

  return (
    <SessionContext.Provider value={auth.session}>
      <div className="shell">
        <NavBar page={page} user={auth.session.user} onLogout={() => void doLogout()} />
        <main className="content" data-testid={`page-${page}`}>
          {page === 'hosts' && <HostsPage />}
          {page === 'vms' && <VmsPage />}
          {page === 'migrations' && <MigrationsPage />}
          {page === 'cluster' && <ClusterPage />}
        </main>
      </div>
    </SessionContext.Provider>
  );
}
