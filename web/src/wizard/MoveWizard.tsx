// Hyper-V's Move wizard: type → destination → options → locations → compatibility →
// summary → progress. Each page has Back/Next; the agents decide everything.
import { useRef, useState } from 'react';
import { actions } from '../../../src/api/actions.js';
import type { VmView } from '../../../src/api/schemas.js';
import type { Incompatibility, MigrationRecord } from '../../../src/migration/schemas.js';
import { ApiError, call } from '../client.js';
import { addSample } from '../samples.js';
import { useSession } from '../session.js';
import { ErrorMessage } from '../ErrorMessage.js';
import { CompatReport } from './CompatReport.js';
import { StepMoveType } from './StepMoveType.js';
import { StepDestination } from './StepDestination.js';
import { StepOptions } from './StepOptions.js';
import { StepLocations } from './StepLocations.js';
import { StepCompatibility, type CompatState } from './StepCompatibility.js';
import { StepSummary } from './StepSummary.js';
import { StepProgress } from './StepProgress.js';
import {
  STEP_TITLES,
  copiesDisks,
  initialChoices,
  moveOptions,
  stepsFor,
  storageMoveBody,
  type Choices,
} from './state.js';

export function MoveWizard({ vm, onClose }: { vm: VmView; onClose: () => void }) {
  const { hosts } = useSession();
  const [c, setC] = useState<Choices>(() => initialChoices(vm));
  const [step, setStep] = useState(1);
  const [compat, setCompat] = useState<CompatState>({ loading: false });
  const [record, setRecord] = useState<MigrationRecord | null>(null);
  const [finishing, setFinishing] = useState(false);
  const [finishError, setFinishError] = useState<unknown>(null);
  const compareSeq = useRef(0);

  const steps = stepsFor(c);
  const dest = hosts.find((h) => h.name === c.dest);
  const to = dest ? { name: dest.name, endpoint: dest.endpoint } : undefined;
  const browseHost = c.type === 'storage' ? vm.host : c.dest;

  const update = (patch: Partial<Choices>): void => {
    setC((prev) => {
      const next = { ...prev, ...patch };
      if (next.type === 'storage' && next.option === 'vmonly') next.option = null;
      return next;
    });
    compareSeq.current++;
    setCompat({ loading: false });
    setFinishError(null);
  };

  const runCompare = async (): Promise<void> => {
    if (!to) return;
    const seq = ++compareSeq.current;
    setCompat({ loading: true });
    try {
      const options = moveOptions(vm, c);
      // A running VM moved live (memory only): the agents also predict the move (QEMU samples 1–5 s).
      const predict = vm.state === 'running' && !options.includeStorage;
      const report = await call(vm.host, actions.compare, {
        body: { vm: vm.name, to, options, ...(predict ? { predict } : {}) },
      });
      if (seq === compareSeq.current) setCompat({ report, loading: false });
    } catch (err) {
      if (seq === compareSeq.current) setCompat({ error: err, loading: false });
    }
  };

  const request =
    c.type === 'storage'
      ? storageMoveBody(vm, c)
      : { vm: vm.name, to: to ?? { name: c.dest, endpoint: '' }, options: moveOptions(vm, c), policy: {} };

  const canNext = ((): boolean => {
    switch (step) {
      case 1:
        return c.type !== null;
      case 2:
        return to !== undefined;
      case 3:
        return c.option !== null;
      case 4:
        return c.option !== 'single' || c.storagePath.trim() !== '';
      case 5:
        return compat.report?.compatible === true && !compat.loading;
      default:
        return false;
    }
  })();

  const idx = steps.indexOf(step);
  const go = (d: number): void => {
    const s = steps[idx + d];
    if (s === undefined) return;
    setStep(s);
    // Arriving at the compatibility page runs the check (unless a result for these choices is there).
    if (s === 5 && !compat.report && !compat.loading && !compat.error) void runCompare();
  };

  const finish = async (): Promise<void> => {
    setFinishing(true);
    setFinishError(null);
    try {
      let rec: MigrationRecord;
      if (c.type === 'storage') rec = await call(vm.host, actions.storageMove, { body: storageMoveBody(vm, c) });
      else if (to)
        rec = await call(vm.host, actions.migrationCreate, {
          body: { vm: vm.name, to, options: moveOptions(vm, c), policy: {} },
        });
      else
        throw new ApiError('E_NO_DESTINATION', 'Cannot move: no destination host is chosen; go back and pick one', 0);
      addSample(rec);
      setRecord(rec);
      setStep(7);
    } catch (err) {
      setFinishError(err);
    } finally {
      setFinishing(false);
    }
  };

  const refused =
    finishError instanceof ApiError && Array.isArray(finishError.context.incompatibilities)
      ? (finishError.context.incompatibilities as Incompatibility[])
      : null;

  return (
    <div className="overlay" role="dialog" aria-modal="true" aria-labelledby="wizard-title" data-testid="move-wizard">
      <div className="wizard card">
        <header className="wizard-head">
          <h2 id="wizard-title">
            Move “{vm.name}” <span className="muted small">on {vm.host}</span>
          </h2>
          <button type="button" className="secondary" onClick={onClose} data-testid="wizard-close">
            {step === 7 ? 'Close' : 'Cancel'}
          </button>
        </header>
        <div className="wizard-body">
          <ol className="wizard-steps">
            {steps.map((s) => (
              <li
                key={s}
                className={s === step ? 'current' : steps.indexOf(s) < idx ? 'done' : ''}
                data-testid={`wizard-nav-${s}`}
              >
                {STEP_TITLES[s]}
              </li>
            ))}
          </ol>
          <section className="wizard-page" data-testid={`wizard-step-${step}`}>
            <h3>{STEP_TITLES[step]}</h3>
            {step === 1 && <StepMoveType value={c.type} onChange={(type) => update({ type })} />}
            {step === 2 && (
              <StepDestination hosts={hosts} current={vm.host} value={c.dest} onChange={(d) => update({ dest: d })} />
            )}
            {step === 3 && (
              <StepOptions
                type={c.type}
                value={c.option}
                onChange={(option) => update({ option })}
                copying={copiesDisks(vm, c)}
                resumable={c.resumable}
                onResumable={(resumable) => update({ resumable })}
              />
            )}
            {step === 4 && browseHost && <StepLocations vm={vm} host={browseHost} choices={c} update={update} />}
            {step === 5 && <StepCompatibility state={compat} dest={c.dest} onCheckAgain={() => void runCompare()} />}
            {step === 6 && (
              <>
                <StepSummary vm={vm} choices={c} request={request} />
                <ErrorMessage error={finishError} testid="wizard-error" />
                {refused && <CompatReport report={{ compatible: false, incompatibilities: refused }} />}
              </>
            )}
            {step === 7 && record && <StepProgress host={vm.host} initial={record} />}
          </section>
        </div>
        {step !== 7 && (
          <footer className="wizard-foot">
            <button
              type="button"
              className="secondary"
              disabled={idx <= 0 || finishing}
              onClick={() => go(-1)}
              data-testid="wizard-back"
            >
              ‹ Back
            </button>
            {step === 6 ? (
              <button type="button" disabled={finishing} onClick={() => void finish()} data-testid="wizard-finish">
                {finishing ? 'Starting…' : 'Finish'}
              </button>
            ) : (
              <button type="button" disabled={!canNext} onClick={() => go(1)} data-testid="wizard-next">
                Next ›
              </button>
            )}
          </footer>
        )}
      </div>
    </div>
  );
}
