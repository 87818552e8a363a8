import type { MoveOption, MoveType } from './state.js';

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
