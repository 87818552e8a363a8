import { ApiError, errorText } from './client.js';

/** An error as the agent (or console server) worded it, with its code. */
export function ErrorMessage({ error, testid }: { error: unknown; testid?: string }) {
  if (!error) return null;
  const code = error instanceof ApiError ? error.code : undefined;
  return (
    <div className="error" role="alert" data-testid={testid}>
      {code && <code className="code">{code}</code>} {errorText(error)}
    </div>
  );
}
