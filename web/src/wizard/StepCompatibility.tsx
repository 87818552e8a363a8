import type { CompareReport } from '../../../src/migration/schemas.js';
import { ErrorMessage } from '../ErrorMessage.js';
import { CompatReport } from './CompatReport.js';

export interface CompatState {
  report?: CompareReport;
  error?: unknown;
  loading: boolean;
}

export function StepCompatibility({
  state,
  dest,
  onCheckAgain,
}: {
  state: CompatState;
  dest: string;
  onCheckAgain: () => void;
}) {
  return (
    <div>
      <p className="muted">
        Host {dest} and the VM's host compare the VM's configuration, CPU, memory, switches and storage.
      </p>
      {state.loading && <p data-testid="compat-loading">Checking…</p>}
      <ErrorMessage error={state.error} testid="compat-error" />
      {state.report && !state.loading && <CompatReport report={state.report} />}
      <button
        type="button"
        className="secondary"
        disabled={state.loading}
        onClick={onCheckAgain}
        data-testid="compat-check-again"
      >
        Check again
      </button>
    </div>
  );
}
