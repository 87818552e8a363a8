import type { HostRef } from '../client.js';

export function StepDestination({
  hosts,
  current,
  value,
  onChange,
}: {
  hosts: readonly HostRef[];
  current: string;
  value: string;
  onChange: (v: string) => void;
}) {
  const others = hosts.filter((h) => h.name !== current);
  return (
    <div className="field">
      <label htmlFor="wizard-destination">Destination host</label>
      <select
        id="wizard-destination"
        value={value}
        onChange={(e) => onChange(e.target.value)}
        data-testid="wizard-destination"
      >
        <option value="">Choose a host…</option>
        {others.map((h) => (
          <option key={h.name} value={h.name}>
            {h.name} ({h.endpoint})
          </option>
        ))}
      </select>
      <p className="muted small">
        The VM runs on {current} now.{others.length === 0 ? ' This console knows no other host.' : ''}
      </p>
    </div>
  );
}
