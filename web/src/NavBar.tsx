export type Page = 'vms' | 'hosts' | 'migrations' | 'cluster';

const LINKS: Array<{ page: Page; label: string }> = [
  { page: 'vms', label: 'Virtual machines' },
  { page: 'hosts', label: 'Hosts' },
  { page: 'migrations', label: 'Migrations' },
  { page: 'cluster', label: 'Cluster' },
];

export function NavBar({
  page,
  user,
  onLogout,
}: {
  page: Page;
  user: { name: string; role: string };
  onLogout: () => void;
}) {
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
      <span className="muted small" data-testid="whoami" data-role={user.role}>
        {user.name} ({user.role})
      </span>
      <button type="button" className="secondary" onClick={onLogout} data-testid="logout">
        Log out
      </button>
    </header>
  );
}
