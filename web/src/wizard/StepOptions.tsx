import type { ResumableMode } from '../../../src/api/defaults.js';
import type { MoveOption, MoveType } from './state.js';

const COPY: Record<ResumableMode, string> = {
  auto: 'Automatic: resumable when the disks hold 1 GiB or more',
  always: 'Resumable: after a cut, a retry copies only what is left',
  never: 'Plain: the shortest switch; a cut copy starts over',
};
const COPY_HELP: Record<ResumableMode, string> = {
  auto: 'Small disks are copied plainly (a cut costs little to redo); larger ones so that a retry resumes.',
  always:
    'The copy is kept if the move is cut (an agent restart, a full pool, a broken link); the same move resumes it. ' +
    "It costs a running VM a short pause at the switch; a stopped VM's disks must be qcow2 " +
    '(others are copied plainly).',
  never:
    "A running VM's disks are mirrored (no extra pause), a stopped VM's copied by qemu-img; a move cut mid-copy " +
    'copies everything again.',
};

const CHOICES: Array<{ value: MoveOption; label: string; help: string; vmOnly?: boolean }> = [
  {
    value: 'single',
    label: "Move all the VM's data to a single location",
    help: 'Disks, configuration, checkpoints and paging files go to one folder.',
  },
  {
    value: 'items',
    label: "Move the VM's data to different locations",
    help: 'Choose a place for each disk and for the configuration.',
  },
  {
    value: 'vmonly',
    label: 'Move only the virtual machine',
    help: 'Memory and device state move; the disks stay where they are (they must be on shared storage).',
    vmOnly: true,
  },
];

export function StepOptions({
  type,
  value,
  onChange,
  copying,
  resumable,
  onResumable,
}: {
  type: MoveType | null;
  value: MoveOption | null;
  onChange: (v: MoveOption) => void;
  /** The move copies the VM's disks: how is asked too. */
  copying: boolean;
  resumable: ResumableMode;
  onResumable: (v: ResumableMode) => void;
}) {
  return (
    <>
      <Choices type={type} value={value} onChange={onChange} />
      {copying && (
        <div className="field">
          <label htmlFor="wizard-resumable">Disk copy</label>
          <select
            id="wizard-resumable"
            value={resumable}
            onChange={(e) => onResumable(e.target.value as ResumableMode)}
            data-testid="wizard-resumable"
          >
            {(Object.keys(COPY) as ResumableMode[]).map((m) => (
              <option key={m} value={m}>
                {COPY[m]}
              </option>
            ))}
          </select>
          <p className="muted small">{COPY_HELP[resumable]}</p>
        </div>
      )}
    </>
  );
}

function Choices({
  type,
  value,
  onChange,
}: {
  type: MoveType | null;
  value: MoveOption | null;
  onChange: (v: MoveOption) => void;
}) {
  return (
    <fieldset className="choices">
      <legend>How should the VM's items move?</legend>
      {CHOICES.filter((c) => !c.vmOnly || type === 'vm').map((c) => (
        <label key={c.value} className={`choice ${value === c.value ? 'selected' : ''}`}>
          <input
            type="radio"
            name="move-option"
            value={c.value}
            checked={value === c.value}
            onChange={() => onChange(c.value)}
            data-testid={`move-option-${c.value}`}
          />
          <span>
            <strong>{c.label}</strong>
            <span className="muted small">{c.help}</span>
          </span>
        </label>
      ))}
    </fieldset>
  );
}
