import type { MoveType } from './state.js';

const CHOICES: Array<{ value: MoveType; label: string; help: string }> = [
  {
    value: 'vm',
    label: 'Move the virtual machine',
    help: 'Move the VM, and optionally its storage, to another host. A running VM keeps running.',
  },
  {
    value: 'storage',
    label: "Move the virtual machine's storage",
    help: "Move the VM's disks and configuration to new places on its current host. A running VM keeps running.",
  },
];

export function StepMoveType({ value, onChange }: { value: MoveType | null; onChange: (v: MoveType) => void }) {
  return (
    <fieldset className="choices">
      <legend>What do you want to move?</legend>
      {CHOICES.map((c) => (
        <label key={c.value} className={`choice ${value === c.value ? 'selected' : ''}`}>
          <input
            type="radio"
            name="move-type"
            value={c.value}
            checked={value === c.value}
            onChange={() => onChange(c.value)}
            data-testid={`move-type-${c.value}`}
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
