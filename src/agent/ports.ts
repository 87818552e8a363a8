// Firewall-friendly ports: a destination's migration streams and NBD exports listen on
// ports taken from one configured range (agent.json "migrationPorts", or
// `ferry agent --migration-ports`), so an administrator opens exactly that range. Without a
// range (labs on one machine) any free port will do.
import { AbortedError, FerryError, InvalidInputError, messageOf } from '../errors.js';
import { probePort } from '../util/free-port.js';

export interface PortRange {
  from: number;
  to: number;
}

/** The range installed hosts use unless agent.json says otherwise (64 ports: 32 moves with storage). */
export const DEFAULT_MIGRATION_PORTS = '49152-49215';

/** Parses "FROM-TO" (1024 ≤ FROM < TO ≤ 65535); `where` names the setting in the message. */
export function parsePortRange(s: string, where: string): PortRange {
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(s.trim());
  const from = Number(m?.[1]);
  const to = Number(m?.[2]);
  if (!m || from < 1024 || to > 65535 || from >= to)
    throw new InvalidInputError(
      `Cannot use ${where} '${s}': expected a range FROM-TO of unprivileged ports with FROM < TO, ` +
        `such as ${DEFAULT_MIGRATION_PORTS}`,
      { range: s },
    );
  return { from, to };
}

/** Refuses a range that contains the agent's own API port. */
export function assertExcludes(range: PortRange, port: number, where: string): void {
  if (port >= range.from && port <= range.to)
    throw new InvalidInputError(
      `Cannot use ${where} ${range.from}-${range.to}: it includes the agent's own port ${port}; ` +
        `choose a range without it, such as ${DEFAULT_MIGRATION_PORTS}`,
      { range, port },
    );
}

export interface PortLease {
  readonly port: number;
  /** Call once QEMU listens on the port (the kernel guards it from then on) or gave up. */
  release(): void;
}

export class PortAllocator {
  /** Ports handed out whose listener may not be open yet. */
  private held = new Set<number>();
  private next: number;

  constructor(readonly range: PortRange | null) {
    // Start somewhere in the range: agents sharing an address (a lab) rarely probe the same port at once.
    this.next = range ? Math.floor(Math.random() * (range.to - range.from + 1)) : 0;
  }

  /** A port free on `host` (nothing listens there and no other move holds it). */
  async allocate(host: string, opts: { signal?: AbortSignal } = {}): Promise<PortLease> {
    if (!this.range) {
      const port = await probe(host, 0);
      if (port === null) throw new FerryError('E_PORTS_EXHAUSTED', `Cannot open a migration port on ${host}`);
      return this.lease(port);
    }
    const { from, to } = this.range;
    const size = to - from + 1;
    for (let k = 0; k < size; k++) {
      if (opts.signal?.aborted) throw new AbortedError(`open a migration port on ${host}`, opts.signal.reason);
      const port = from + ((this.next + k) % size);
      if (this.held.has(port)) continue;
      if ((await probe(host, port)) === null) continue;
      this.next = (port - from + 1) % size;
      return this.lease(port);
    }
    throw new FerryError(
      'E_PORTS_EXHAUSTED',
      `Cannot open a migration port on ${host}: every port of ${from}-${to} is in use ` +
        `(${this.held.size} held by moves starting now); wait for moves to finish or widen "migrationPorts" ` +
        "in the agent's configuration (and the firewall)",
      { context: { host, range: this.range } },
    );
  }

  private lease(port: number): PortLease {
    this.held.add(port);
    return { port, release: () => this.held.delete(port) };
  }
}

/** Binds `host:port` for a moment: the port it got, or null when something else holds it. */
function probe(host: string, port: number): Promise<number | null> {
  return probePort(host, port).catch((err: unknown) => {
    throw new FerryError(
      'E_MIGRATION_ADDRESS',
      `Cannot listen for migrations on ${host}: ${messageOf(err)}; ` +
        "set the migration address to one of this host's addresses",
      { cause: err },
    );
  });
}

const allocators = new WeakMap<object, PortAllocator>();

/** The one allocator of an agent (keyed by its configuration object). */
export function portAllocatorFor(cfg: { migrationPorts: PortRange | null }): PortAllocator {
  let a = allocators.get(cfg);
  if (!a) {
    a = new PortAllocator(cfg.migrationPorts);
    allocators.set(cfg, a);
  }
  return a;
}
