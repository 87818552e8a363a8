import { actions } from '../../../src/api/actions.js';
import { TERMINAL, type MigrationRecord } from '../../../src/migration/schemas.js';
import { call } from '../client.js';
import { addSample } from '../samples.js';
import { useLive } from '../useLive.js';
import { isMigrationEvent } from '../../../src/api/events.js';
import { ErrorMessage } from '../ErrorMessage.js';
import { MigrationView } from '../MigrationView.js';

/** Follows the new migration on its source host until it ends. */
export function StepProgress({ host, initial }: { host: string; initial: MigrationRecord }) {
  const live = useLive(
    async (signal) => {
      const r = await call(host, actions.migrationShow, { params: { id: initial.id } }, { signal });
      addSample(r);
      return r;
    },
    `${host}/${initial.id}`,
    [host],
    (_h, e) => {
      if (e === 'connection') return 'reload';
      if (!isMigrationEvent(e) || e.migration.id !== initial.id) return null;
      const rec = e.migration;
      addSample(rec);
      return () => rec;
    },
  );
  const rec = live.data ?? initial;
  const done = TERMINAL.includes(rec.state);
  return (
    <div>
      {done && rec.state === 'completed' && (
        <p className="success" data-testid="wizard-done">
          The move completed.
        </p>
      )}
      <MigrationView record={rec} host={host} onChange={() => live.refresh()} />
      {live.error && !done && <ErrorMessage error={live.error} />}
    </div>
  );
}
