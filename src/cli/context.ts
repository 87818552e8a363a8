// Which hosts the CLI talks to, with which credentials: a lab (--lab DIR / FERRY_LAB) or a
// context file (--context FILE, else FERRY_CONTEXT, else ~/.config/ferry/context.json as
// `ferry domain init` writes it): {"domain","ca","cert","key","hosts":[{"name","endpoint"}]},
// paths relative to the file.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as z from 'zod';
import { FerryError, NotFoundError } from '../errors.js';
import { AgentClient, type Credentials } from '../api/client.js';
import { actions } from './actions.js';
import { labCredentials, labEndpoint, readLab } from '../lab/file.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import type { VmView } from '../api/schemas.js';
import { VmHosts, vmHostsFile } from './vm-hosts.js';

export interface GlobalOpts {
  lab?: string;
  context?: string;
  json?: boolean;
}

export interface Context {
  hosts: Array<{ name: string; endpoint: string }>;
  credentials: Credentials;
  source: string;
  /** The domain (CA) folder, when this machine holds it (the admin machine, a lab). */
  domainDir?: string;
  /** The context file, when the context is one (not a lab). */
  file?: string;
}

export const ContextFile = z.object({
  domain: z.string().optional(),
  ca: z.string(),
  cert: z.string(),
  key: z.string(),
  hosts: z.array(z.object({ name: z.string(), endpoint: z.url() })).default([]),
});
export type ContextFile = z.infer<typeof ContextFile>;

/** $XDG_CONFIG_HOME/ferry, else ~/.config/ferry. */
export function configDir(): string {
  const base = process.env.XDG_CONFIG_HOME || path.join(os.homedir(), '.config');
  return path.join(path.resolve(base), 'ferry');
}

/** The context file used when neither --lab, --context nor FERRY_LAB is given. */
export function defaultContextFile(): string {
  return process.env.FERRY_CONTEXT ? path.resolve(process.env.FERRY_CONTEXT) : path.join(configDir(), 'context.json');
}

export function defaultDomainDir(): string {
  return path.join(configDir(), 'domain');
}

export async function readContextFile(file: string): Promise<ContextFile> {
  let raw: unknown;
  try {
    raw = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    throw new NotFoundError(
      'E_CONTEXT_NOT_FOUND',
      `Cannot read context file ${file}: ${(err as Error).message}; give a JSON file with ca, cert, ` +
        `key and hosts, or create one with 'ferry domain init'`,
      { file },
    );
  }
  const r = ContextFile.safeParse(raw, { jitless: true }); // read once: compiling a fast check costs more
  if (!r.success)
    throw new FerryError(
      'E_INVALID_INPUT',
      `Cannot use context file ${file}: ${r.error.issues.map((i) => `${i.path.join('.')} ${i.message}`).join('; ')}`,
      {},
    );
  return r.data;
}

export async function writeContextFile(file: string, c: ContextFile): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, JSON.stringify(c, null, 2) + '\n', { mode: 0o600 });
}

/** Which context file a command means: --context, else FERRY_CONTEXT, else the default. */
export function contextFileOf(o: GlobalOpts): string {
  return o.context ? path.resolve(o.context) : defaultContextFile();
}

async function fromFile(file: string): Promise<Context> {
  const c = await readContextFile(file);
  const rel = (p: string): string => path.resolve(path.dirname(file), p);
  return {
    hosts: c.hosts,
    credentials: { ca: rel(c.ca), cert: rel(c.cert), key: rel(c.key) },
    source: file,
    file,
    ...(c.domain ? { domainDir: rel(c.domain) } : {}),
  };
}

export async function loadContext(o: GlobalOpts): Promise<Context> {
  if (o.context) return fromFile(path.resolve(o.context));
  const dir = o.lab ?? process.env.FERRY_LAB;
  if (dir) {
    const lab = await readLab(path.resolve(dir));
    return {
      hosts: lab.hosts.map((h) => ({ name: h.name, endpoint: labEndpoint(h) })),
      credentials: labCredentials(lab.dir),
      source: lab.dir,
      domainDir: path.join(lab.dir, 'domain'),
    };
  }
  const file = defaultContextFile();
  if (!fs.existsSync(file))
    throw new FerryError(
      'E_USAGE',
      `Cannot find any Ferry host: there is no context at ${file}; ` +
        `create one with 'ferry domain init' (the admin machine), or give --lab DIR (or set FERRY_LAB) ` +
        `for a local lab, or --context FILE`,
      {},
    );
  return fromFile(file);
}

function notFound(name: string, unreachable: string[]): NotFoundError {
  const also = unreachable.length ? ` (hosts not answering: ${unreachable.join(', ')})` : '';
  return new NotFoundError(
    'E_VM_NOT_FOUND',
    `Cannot find VM '${name}' on any host${also}; 'ferry vm list' shows the VMs`,
    { vm: name, unreachable },
  );
}

const unreachableOf = (err: NotFoundError): string[] =>
  (err.context as { unreachable?: string[] } | undefined)?.unreachable ?? [];

/** How long the host a VM was last seen on may take to answer before every host is asked too. */
const HINT_GRACE_MS = 1_000;

export class Clients {
  private cache = new Map<string, AgentClient>();
  /** Where each VM was last seen: `locate` asks that host first. */
  readonly vmHosts: VmHosts;
  constructor(readonly ctx: Context) {
    this.vmHosts = new VmHosts(vmHostsFile(ctx));
  }

  host(name: string): AgentClient {
    const h = this.ctx.hosts.find((x) => x.name === name);
    if (!h)
      throw new NotFoundError(
        'E_HOST_NOT_FOUND',
        this.ctx.hosts.length
          ? `Cannot find host '${name}': known hosts are ${this.ctx.hosts.map((x) => x.name).join(', ')}`
          : `Cannot find host '${name}': ${this.ctx.source} has no hosts yet; ` +
              "enrol one ('ferry host init' on it, 'ferry domain sign' here)",
        { host: name },
      );
    let c = this.cache.get(name);
    if (!c) {
      c = new AgentClient({ endpoint: h.endpoint, host: h.name, credentials: this.ctx.credentials });
      this.cache.set(name, c);
    }
    return c;
  }

  all(): AgentClient[] {
    return this.ctx.hosts.map((h) => this.host(h.name));
  }

  /** Every VM on every reachable host (unreachable hosts are reported, not fatal). */
  async allVms(): Promise<{ vms: VmView[]; unreachable: string[] }> {
    const res = await Promise.all(
      this.all().map(async (c) => {
        try {
          return { vms: await c.call(actions.vmList, {}, { timeoutMs: 30_000 }), down: null };
        } catch {
          return { vms: [] as VmView[], down: c.host };
        }
      }),
    );
    this.learn(res.map((r) => r.vms));
    const vms = res.flatMap((r) => r.vms);
    return { vms, unreachable: res.flatMap((r) => (r.down ? [r.down] : [])) };
  }

  /** The client of the host VM was last seen on, if that host is still in the context. */
  hinted(vm: string): AgentClient | null {
    const h = this.vmHosts.get(vm);
    return h !== undefined && this.ctx.hosts.some((x) => x.name === h) ? this.host(h) : null;
  }

  /**
   * The host a VM is on: the one it was last seen on if it says so, else the first host that
   * lists it. A hint never decides against the hosts' answers: a hinted host that does not
   * have the VM (moved by someone else, deleted), refuses or fails sends the question to every
   * host at once; one that has not answered within HINT_GRACE_MS (down, unreachable) does not
   * hold the command up: every host is asked beside it, and the first answer that finds the VM
   * wins.
   */
  async locate(name: string): Promise<{ client: AgentClient; vm: VmView }> {
    const client = this.hinted(name);
    if (!client) return this.locateEverywhere(name);
    const ac = new AbortController();
    const hinted = client.call(actions.vmShow, { params: { name } }, { timeoutMs: 30_000, signal: ac.signal }).then(
      (vm) => (vm.host === client.host ? { client, vm } : ('absent' as const)),
      (err: unknown) => ((err as FerryError).code === 'E_VM_NOT_FOUND' ? ('absent' as const) : ('down' as const)),
    );
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<'grace'>((resolve) => {
      timer = setTimeout(() => resolve('grace'), HINT_GRACE_MS);
    });
    const first = await Promise.race([hinted, grace]);
    clearTimeout(timer);
    if (typeof first === 'object') return first;
    if (first !== 'grace') return this.locateEverywhere(name);
    // Slow or silent: the other hosts are asked (in order, as without hints); the hinted one
    // still answers through `hinted`, and its yes wins.
    const others = this.locateEverywhere(name, client);
    others.catch(() => undefined);
    try {
      return await Promise.race([
        hinted.then((h) => (typeof h === 'object' ? h : others)),
        others.catch(async (err: unknown) => {
          const h = await hinted;
          if (typeof h === 'object') return h;
          throw h === 'down' && err instanceof NotFoundError
            ? notFound(name, [client.host, ...unreachableOf(err)])
            : err;
        }),
      ]);
    } finally {
      ac.abort();
    }
  }

  /**
   * Asks every host; resolves with the first host in the context's order that lists the VM (a
   * name may be on several hosts: the same answer as `vm list` order gives), without waiting
   * for later hosts once an earlier one has it.
   */
  private locateEverywhere(name: string, skip?: AgentClient): Promise<{ client: AgentClient; vm: VmView }> {
    const hosts = this.all().filter((c) => c.host !== skip?.host);
    // Per host: undefined until it answers, then its VM of that name, or null (not there, or down).
    const seen: Array<VmView | null | undefined> = hosts.map(() => undefined);
    const lists: Array<VmView[] | null> = hosts.map(() => null);
    const unreachable: string[] = [];
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (): void => {
        for (const [i, v] of seen.entries()) {
          if (v === undefined) return; // an earlier host decides first
          if (v) {
            settled = true;
            this.vmHosts.set(name, v.host);
            resolve({ client: hosts[i] ?? this.host(v.host), vm: v });
            return;
          }
        }
        settled = true;
        if (!unreachable.length && !skip) this.vmHosts.set(name, null);
        reject(notFound(name, unreachable));
      };
      const decide = (): void => {
        if (!settled) settle();
        // Every host answered (the process may end before the slow ones): hints from all lists.
        if (!seen.includes(undefined)) this.learn(lists.flatMap((l) => (l ? [l] : [])));
      };
      for (const [i, c] of hosts.entries())
        c.call(actions.vmList, {}, { timeoutMs: 30_000 }).then(
          (vms) => {
            lists[i] = vms;
            seen[i] = vms.find((v) => v.name === name) ?? null;
            decide();
          },
          () => {
            unreachable.push(c.host);
            seen[i] = null;
            decide();
          },
        );
      if (!hosts.length) decide();
    });
  }

  /**
   * Hints from every answering host's list: a name on one host is hinted there; a name on
   * several is not hinted (it is found in the context's order, as without hints).
   */
  private learn(lists: VmView[][]): void {
    const where = new Map<string, string[]>();
    for (const v of lists.flat()) where.set(v.name, [...(where.get(v.name) ?? []), v.host]);
    for (const [vm, on] of where) this.vmHosts.set(vm, on.length === 1 ? (on[0] ?? null) : null);
  }

  close(): void {
    for (const c of this.cache.values()) c.close();
  }
}

/** Runs a command body with clients, always closing them. */
export async function withClients<T>(o: GlobalOpts, fn: (c: Clients) => Promise<T>): Promise<T> {
  const clients = new Clients(await loadContext(o));
  try {
    return await fn(clients);
  } finally {
    clients.close();
    clients.vmHosts.save();
  }
}
