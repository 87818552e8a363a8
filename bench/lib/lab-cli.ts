// What the cluster benchmarks share: their flags, bin/ferry against a lab (synchronous: a
// benchmark times each step itself), and a probe VM made on a lab host.
import path from 'node:path';
import { spawnSync } from 'node:child_process';

const BIN = path.join(import.meta.dirname, '..', '..', 'bin', 'ferry');

/** `--name value` from the command line, or `def`. */
export function opt(name: string, def: string): string {
  const args = process.argv.slice(2);
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? (args[i + 1] ?? def) : def;
}

export function flag(name: string): boolean {
  return process.argv.slice(2).includes(`--${name}`);
}

/** Runs bin/ferry on `lab`; throws its output when it fails. */
export function ferry(a: string[], lab: string): string {
  const r = spawnSync(BIN, a, { env: { ...process.env, FERRY_LAB: lab }, encoding: 'utf8', timeout: 900_000 });
  if (r.status !== 0) throw new Error(`ferry ${a.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

export const json = (a: string[], lab: string): unknown => JSON.parse(ferry([...a, '--json'], lab));

/** A running probe VM on `host`, its folder in the lab's shared pool. */
export function newProbe(lab: string, name: string, host: string, extra: string[] = []): { id: string; host: string } {
  return json(
    [
      'vm',
      'new',
      name,
      '--host',
      host,
      '--guest',
      'probe',
      '--path',
      path.join(lab, 'shared', name),
      '--start',
      ...extra,
    ],
    lab,
  ) as { id: string; host: string };
}
