export type Page = 'vms' | 'hosts' | 'migrations' | 'cluster';

const LINKS: Array<{ page: Page; label: string }> = [
  { page: 'vms', label: 'Virtual machines' },
  { page: 'hosts', label: 'Hosts' },
  { page: 'migrations', label: 'Migrations' },
  { page: 'cluster', label: 'Cluster' },
];

export function NavBar({ page, onLogout }: { page: Page; onLogout: () => void }) {
  return (
    <header className="topbar">
      <span className="brand">Ferry</span>
      <nav>
        {LINKS.map((l) => (
          <a
            key={l.page}
            href={`#/${l.page}`}
            className={l.page === page ? 'active' : ''}
            data-testid={`nav-${l.page}`}
          >
            {l.label}
          </a>
        ))}
      </nav>
      <button type="button" className="secondary" onClick={onLogout} data-testid="logout">
        Log out
      </button>
    </header>
  );
}
