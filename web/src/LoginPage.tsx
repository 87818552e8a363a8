import { useState, type SyntheticEvent } from 'react';
import { errorText, login, type SessionInfo } from './client.js';

export function LoginPage({ error, onLoggedIn }: { error?: string; onLoggedIn: (s: SessionInfo) => void }) {
  const [name, setName] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [failure, setFailure] = useState<string | undefined>(error);

  const submit = async (e: SyntheticEvent): Promise<void> => {
    e.preventDefault();
    setBusy(true);
    setFailure(undefined);
    try {
      const s = await login(name, password);
      setPassword('');
      onLoggedIn(s);
    } catch (err) {
      setFailure(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="login">
      <form className="card login-card" onSubmit={(e) => void submit(e)} data-testid="login-form">
        <h1>Ferry console</h1>
        <p className="muted">Log in with your console user name and password.</p>
        <label htmlFor="user">User name</label>
        <input
          id="user"
          autoComplete="username"
          autoFocus
          value={name}
          onChange={(e) => setName(e.target.value)}
          data-testid="login-name"
        />
        <label htmlFor="password">Password</label>
        <input
          id="password"
          type="password"
          autoComplete="current-password"
          value={password}
          onChange={(e) => setPassword(e.target.value)}
          data-testid="login-password"
        />
        {failure && (
          <div className="error" role="alert" data-testid="login-error">
            {failure}
          </div>
        )}
        <button type="submit" disabled={busy || !name || !password} data-testid="login-submit">
          {busy ? 'Logging in…' : 'Log in'}
        </button>
      </form>
    </div>
  );
}
