// Where a move's time went: its steps on both hosts, in the order they began (`migration show`).
import type { StepTime } from '../../migration/schemas.js';

const ms = (x: number): string => (x < 10 ? x.toFixed(1) : Math.round(x).toString());

/** Lines of a table of the steps (none for a record older than the field). */
export function stepLines(
  steps: readonly StepTime[] | undefined,
  hosts: { source: string; destination: string },
): string[] {
  if (!steps?.length) return [];
  const rows = [...steps]
    .sort((a, b) => a.atMs - b.atMs)
    .map((s) => ({
      at: `+${ms(s.atMs)}`,
      host: s.on === 'source' ? hosts.source : hosts.destination,
      name: s.name,
      took: `${ms(s.ms)} ms${s.failed ? ' (failed)' : ''}`,
    }));
  const at = Math.max(...rows.map((r) => r.at.length));
  const host = Math.max(...rows.map((r) => r.host.length));
  const name = Math.max(...rows.map((r) => r.name.length));
  return [
    'steps (ms after the request, host, step, time):',
    ...rows.map((r) => `  ${r.at.padStart(at)}  ${r.host.padEnd(host)}  ${r.name.padEnd(name)}  ${r.took}`),
  ];
}
