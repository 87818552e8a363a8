// Which hosts the CLI talks to, with which credentials: a lab (--lab DIR / FERRY_LAB) or a
// context file (--context FILE, else FERRY_CONTEXT, else ~/.config/ferry/context.json as
// `ferry domain init` writes it): {"domain","ca","cert","key","hosts":[{"name","endpoint"}]},
// paths relative to the file.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { FerryError, NotFoundError } from '../errors.js';
import { AgentClient, type Credentials } from '../api/client.js';
import { actions } from '../api/actions.js';
import { labCredentials, labEndpoint, readLab } from '../lab/file.js';
import { writeAtomic } from '../domain/request.js';
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
  const r = ContextFile.safeParse(raw);
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
  await writeAtomic(file, JSON.stringify(c, null, 2) + '\n', 0o600);
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
    const vms = res.flatMap((r) => r.vms);
    for (const v of vms) this.vmHosts.set(v.name, v.host);
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
      (vm) => (vm.host === client.host ? { client, vm } : null),
      () => null,
    );
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<'grace'>((resolve) => {
      timer = setTimeout(() => resolve('grace'), HINT_GRACE_MS);
    });
    const first = await Promise.race([hinted, grace]);
    clearTimeout(timer);
    if (first !== 'grace' && first !== null) return first;
    const everywhere = this.locateEverywhere(name);
    if (first === null) return everywhere;
    everywhere.catch(() => undefined); // the race below may end on the hinted answer
    try {
      return await Promise.race([hinted.then((h) => h ?? everywhere), everywhere]);
    } finally {
      ac.abort();
    }
  }

  /** Asks every host; resolves with the first that lists the VM, without waiting for slower hosts. */
  private locateEverywhere(name: string): Promise<{ client: AgentClient; vm: VmView }> {
    return new Promise((resolve, reject) => {
      const unreachable: string[] = [];
      let pending = this.ctx.hosts.length;
      let found = false;
      const done = (): void => {
        if (found || --pending > 0) return;
        if (!unreachable.length) this.vmHosts.set(name, null);
        const also = unreachable.length ? ` (hosts not answering: ${unreachable.join(', ')})` : '';
        reject(
          new NotFoundError(
            'E_VM_NOT_FOUND',
            `Cannot find VM '${name}' on any host${also}; 'ferry vm list' shows the VMs`,
            { vm: name },
          ),
        );
      };
      pending++; // held until every request is out: no host at all still ends in `done`
      for (const c of this.all())
        c.call(actions.vmList, {}, { timeoutMs: 30_000 }).then(
          (vms) => {
            for (const v of vms) this.vmHosts.set(v.name, v.host);
            const vm = vms.find((v) => v.name === name);
            if (vm && !found) {
              found = true;
              resolve({ client: c, vm }); // the host that answered: the one it is on
            }
            done();
          },
          () => {
            unreachable.push(c.host);
            done();
          },
        );
      done();
    });
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
    await clients.vmHosts.save();
  }
}
