import { useState, type FormEvent } from 'react';
import { errorText, login } from './client.js';

export function LoginPage({ error, onLoggedIn }: { error?: string; onLoggedIn: () => void | Promise<void> }) {
  const [token, setToken] = useState('');
  const [busy, setBusy] = useState(false);
  const [failure, setFailure] = useState<string | undefined>(error);

  const submit = async (e: FormEvent): Promise<void> => {
    e.preventDefault();
    setBusy(true);
    setFailure(undefined);
    try {
      await login(token);
      await onLoggedIn();
    } catch (err) {
      setFailure(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="login">
      <form className="card login-card" onSubmit={submit} data-testid="login-form">
        <h1>Ferry console</h1>
        <p className="muted">Log in with the console's access token.</p>
        <label htmlFor="token">Access token</label>
        <input
          id="token"
          type="password"
          autoComplete="current-password"
          autoFocus
          value={token}
          onChange={(e) => setToken(e.target.value)}
          data-testid="login-token"
        />
        {failure && (
          <div className="error" role="alert" data-testid="login-error">
            {failure}
          </div>
        )}
        <button type="submit" disabled={busy || !token} data-testid="login-submit">
          {busy ? 'Logging in…' : 'Log in'}
        </button>
      </form>
    </div>
  );
}
