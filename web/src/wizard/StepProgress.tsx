import { actions } from '../../../src/api/actions.js';
import { TERMINAL, type MigrationRecord } from '../../../src/migration/schemas.js';
import { call } from '../client.js';
import { addSample } from '../samples.js';
import { usePoll } from '../usePoll.js';
import { ErrorMessage } from '../ErrorMessage.js';
import { MigrationView } from '../MigrationView.js';

/** Follows the new migration on its source host until it ends. */
export function StepProgress({ host, initial }: { host: string; initial: MigrationRecord }) {
  const poll = usePoll(
    async (signal) => {
      const r = await call(host, actions.migrationShow, { params: { id: initial.id } }, { signal });
      addSample(r);
      return r;
    },
    500,
    [host, initial.id],
  );
  const rec = poll.data ?? initial;
  const done = TERMINAL.includes(rec.state);
  return (
    <div>
      {done && rec.state === 'completed' && (
        <p className="success" data-testid="wizard-done">
          The move completed.
        </p>
      )}
      <MigrationView record={rec} host={host} onChange={() => poll.refresh()} />
      {poll.error && !done && <ErrorMessage error={poll.error} />}
    </div>
  );
}
