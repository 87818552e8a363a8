// The VM spec on a host: parsing with errors that name each field, new ids and MACs, and
// paths relative to the VM's folder. The schema itself is src/api/vm-spec.ts (browser-safe).
import { randomUUID, randomBytes } from 'node:crypto';
import path from 'node:path';
import type { z } from 'zod';
import { InvalidInputError } from '../errors.js';
import { VmSpec } from '../api/vm-spec.js';

export * from '../api/vm-spec.js';

/** Turns zod issues into one InvalidInputError that names each field, its value and the fix. */
export function specError(what: string, err: z.ZodError, input: unknown): InvalidInputError {
  const parts = err.issues.slice(0, 5).map((iss) => {
    const field = iss.path.map(String).join('.') || '(spec)';
    const value = valueAt(input, iss.path as (string | number)[]);
    // JSON.stringify gives undefined for a function or a symbol, whatever its type says.
    const shown = value === undefined ? 'missing' : (JSON.stringify(value) as string | undefined)?.slice(0, 80);
    if (iss.code === 'unrecognized_keys') {
      const keys = (iss as { keys: string[] }).keys.map((k) => `'${field === '(spec)' ? k : `${field}.${k}`}'`);
      return `unknown field(s) ${keys.join(', ')}; remove them`;
    }
    return `field '${field}' (${shown}) ${iss.message.replace(/^Invalid input: /, '')}`;
  });
  const more = err.issues.length > 5 ? ` (and ${err.issues.length - 5} more)` : '';
  return new InvalidInputError(
    `Cannot ${what}: ${parts.join('; ')}${more}`,
    {
      issues: err.issues.map((i) => ({ field: i.path.map(String).join('.'), message: i.message })),
    },
    err,
  );
}

function valueAt(obj: unknown, p: (string | number)[]): unknown {
  let cur = obj;
  for (const k of p) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string | number, unknown>)[k];
  }
  return cur;
}

export function parseVmSpec(input: unknown, what = 'accept the VM spec'): VmSpec {
  const r = VmSpec.safeParse(input);
  if (!r.success) throw specError(what, r.error, input);
  return r.data;
}

export function newVmId(): string {
  return randomUUID();
}

/** A MAC in QEMU's locally administered range. */
export function newMac(): string {
  const b = randomBytes(3);
  return `52:54:00:${[...b].map((x) => x.toString(16).padStart(2, '0')).join(':')}`;
}

/** Resolves a kernel/initrd path relative to the VM folder. */
export function resolveVmFile(spec: Pick<VmSpec, 'configPath'>, p: string): string {
  return path.isAbsolute(p) ? p : path.join(spec.configPath, p);
}
