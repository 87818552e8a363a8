// Every etcd key of a cluster is built here, and every value read back is parsed here with
// its zod schema (model.ts): no other module writes a key string or casts JSON. A value that
// does not parse is never trusted: a read of one key fails with E_CLUSTER_BAD_VALUE naming
// the key and the schema's complaint; a listing skips it and reports it (`onBad`), so one bad
// entry written by a broken or hostile peer cannot stop the leader's loops.
import type { z } from 'zod';
import { FerryError, InvalidInputError } from '../errors.js';
import type { ClusterStore, StoreCallOptions } from './store.js';
import {
  AdmitRecord,
  Batch,
  ConfigRecord,
  DEFAULT_LIMITS,
  HaRecord,
  LeaderGrant,
  MemberRecord,
  NodeRecord,
  PauseRecord,
  QueueEntry,
  type Limits,
} from './model.js';

/** Node and VM names, migration ids: one key segment (no '/'). */
const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** A value under a key that does not parse: the key and what is wrong with it. */
export interface BadValue {
  key: string;
  issue: string;
}
/** Where a listing reports a value it skipped (the agent emits `cluster.bad-value`). */
export type OnBad = (bad: BadValue) => void;

export class BadValueError extends FerryError {
  constructor(
    what: string,
    readonly bad: BadValue,
  ) {
    super(
      'E_CLUSTER_BAD_VALUE',
      `Cannot ${what}: etcd key '${bad.key}' holds a value that is not valid (${bad.issue}); ` +
        'a broken or hostile node wrote it: read it with etcdctl, then delete or rewrite it',
      { context: { ...bad } },
    );
  }
}

function segment(what: string, s: string): string {
  if (!SEGMENT.test(s))
    throw new InvalidInputError(
      `Cannot build the etcd key of ${what} '${s}': a name is letters, digits, dot, dash or underscore`,
      { name: s },
    );
  return s;
}

function issueOf(err: z.ZodError): string {
  return err.issues
    .slice(0, 3)
    .map((i) => (i.path.length ? `${i.path.join('.')}: ${i.message}` : i.message))
    .join('; ');
}

/** One kind of value: its schema, and how to encode and decode it. */
export class Codec<S extends z.ZodType> {
  constructor(readonly schema: S) {}

  /** The value as stored; a value that would not read back is a bug, caught before the write. */
  encode(value: z.input<S>): string {
    return JSON.stringify(this.schema.parse(value));
  }

  /** The value under `key`, or the reason it is not valid. */
  decode(key: string, raw: string): { ok: true; value: z.output<S> } | { ok: false; bad: BadValue } {
    let json: unknown;
    try {
      json = JSON.parse(raw);
    } catch {
      return { ok: false, bad: { key, issue: `not JSON: ${JSON.stringify(raw.slice(0, 40))}` } };
    }
    const r = this.schema.safeParse(json);
    return r.success ? { ok: true, value: r.data } : { ok: false, bad: { key, issue: issueOf(r.error) } };
  }
}

/** A family of keys `<prefix><name>`, one value kind. */
export class Family<S extends z.ZodType> extends Codec<S> {
  constructor(
    readonly prefix: string,
    readonly what: string,
    schema: S,
  ) {
    super(schema);
  }

  key(name: string): string {
    return `${this.prefix}${segment(this.what, name)}`;
  }

  /** The name in a key of this family, or null (another family, or more than one segment). */
  nameOf(key: string): string | null {
    if (!key.startsWith(this.prefix)) return null;
    const name = key.slice(this.prefix.length);
    return SEGMENT.test(name) ? name : null;
  }
}

export const members = new Family('members/', 'node', MemberRecord);
export const nodes = new Family('nodes/', 'node', NodeRecord);
export const paused = new Family('paused/', 'node', PauseRecord);
export const vms = new Family('vms/', 'VM', HaRecord);
export const admits = new Family('admit/', 'migration', AdmitRecord);
export const batches = new Family('batches/', 'node', Batch);
export const leaders = new Family('leaders/', 'node', LeaderGrant);

/** queue/<source>/<id>: each source's entries under its own prefix (its etcd role may write only there). */
export const queue = {
  prefix: 'queue/',
  codec: new Codec(QueueEntry),
  /** The prefix of one source node's entries. */
  of: (source: string): string => `queue/${segment('node', source)}/`,
  key: (source: string, id: string): string => `queue/${segment('node', source)}/${segment('migration', id)}`,
  /** Source and id of a queue key, or null. */
  parse(key: string): { source: string; id: string } | null {
    const m = /^queue\/([^/]+)\/([^/]+)$/.exec(key);
    if (!m?.[1] || !m[2] || !SEGMENT.test(m[1]) || !SEGMENT.test(m[2])) return null;
    return { source: m[1], id: m[2] };
  },
} as const;

export const config = { key: 'config', codec: new Codec(ConfigRecord) } as const;

/** The leader election (store.campaign('leader', …) keeps its keys under election/leader/). */
export const election = { name: 'leader', prefix: 'election/' } as const;

// ---------------------------------------------------------------------------------------
// Reading

export interface Entry<T> {
  name: string;
  key: string;
  /** The stored text, for compare-and-swap. */
  raw: string;
  value: T;
}

/** One key of a family, or null; a value that does not parse fails with E_CLUSTER_BAD_VALUE. */
export async function readOne<S extends z.ZodType>(
  store: ClusterStore,
  fam: Family<S>,
  name: string,
  opts: StoreCallOptions = {},
): Promise<Entry<z.output<S>> | null> {
  const key = fam.key(name);
  const raw = await store.get(key, opts);
  if (raw === null) return null;
  const d = fam.decode(key, raw);
  if (!d.ok) throw new BadValueError(`read ${fam.what} '${name}'`, d.bad);
  return { name, key, raw, value: d.value };
}

/** Every key of a family, by name; values that do not parse (and stray keys) are reported and left out. */
export async function readAll<S extends z.ZodType>(
  store: ClusterStore,
  fam: Family<S>,
  onBad: OnBad,
  opts: StoreCallOptions = {},
): Promise<Map<string, Entry<z.output<S>>>> {
  const out = new Map<string, Entry<z.output<S>>>();
  for (const [key, raw] of Object.entries(await store.getPrefix(fam.prefix, opts))) {
    const name = fam.nameOf(key);
    if (name === null) {
      onBad({ key, issue: `not a key of the form ${fam.prefix}<${fam.what}>` });
      continue;
    }
    const d = fam.decode(key, raw);
    if (d.ok) out.set(name, { name, key, raw, value: d.value });
    else onBad(d.bad);
  }
  return out;
}

/** Every queue entry (all sources), with its key and stored text; bad ones reported and left out. */
export async function readQueueEntries(
  store: ClusterStore,
  onBad: OnBad,
  opts: StoreCallOptions = {},
): Promise<Array<{ key: string; raw: string; entry: QueueEntry }>> {
  const out: Array<{ key: string; raw: string; entry: QueueEntry }> = [];
  for (const [key, raw] of Object.entries(await store.getPrefix(queue.prefix, opts))) {
    const where = queue.parse(key);
    const d = queue.codec.decode(key, raw);
    if (!where) onBad({ key, issue: 'not a key of the form queue/<source>/<id>' });
    else if (!d.ok) onBad(d.bad);
    else if (d.value.id !== where.id || d.value.from !== where.source)
      onBad({ key, issue: `names move ${d.value.id} from ${d.value.from}, not the key's` });
    else out.push({ key, raw, entry: d.value });
  }
  return out;
}

/** The queue's limits: those set in `config`, defaults for the rest (a bad value: all defaults, reported). */
export async function readLimits(store: ClusterStore, onBad: OnBad, opts: StoreCallOptions = {}): Promise<Limits> {
  const raw = await store.get(config.key, opts);
  return parseLimits(raw, onBad);
}

export function parseLimits(raw: string | null, onBad: OnBad): Limits {
  if (raw === null) return DEFAULT_LIMITS;
  const d = config.codec.decode(config.key, raw);
  if (!d.ok) {
    onBad(d.bad);
    return DEFAULT_LIMITS;
  }
  return { ...DEFAULT_LIMITS, ...d.value };
}

/** Changes some limits; resolves to all of them. */
export async function writeLimits(
  store: ClusterStore,
  patch: { [F in keyof Limits]?: Limits[F] | undefined },
  onBad: OnBad,
  opts: StoreCallOptions = {},
): Promise<Limits> {
  const cur = await readLimits(store, onBad, opts);
  const next: Limits = {
    maxOutgoing: patch.maxOutgoing ?? cur.maxOutgoing,
    maxIncoming: patch.maxIncoming ?? cur.maxIncoming,
    maxTotal: patch.maxTotal ?? cur.maxTotal,
    adaptive: patch.adaptive ?? cur.adaptive,
  };
  await store.put(config.key, config.codec.encode(next), opts);
  return next;
}
