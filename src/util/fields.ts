// Requests carry optional fields; one left out must change nothing when merged over a
// current value (`{ ...current, ...definedFields(request) }`).

/** The fields of `o` that are set (not undefined). */
export function definedFields<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const key of Object.keys(o) as Array<keyof T>) if (o[key] !== undefined) out[key] = o[key];
  return out;
}
