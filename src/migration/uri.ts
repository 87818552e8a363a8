// What the source accepts from a destination's Prepare before it reaches QEMU: the stream URI
// goes straight to QMP `migrate`, where `exec:` runs a shell command on the source and `fd:`,
// `file:` or `rdma:` reach other things, and the NBD address goes into `blockdev-add` and into
// qemu-img's comma-separated option string. A hostile destination must not pick any of them:
// only `tcp:` to the address the source expects for that destination (its migration address,
// an address of its migration networks, or the address of its agent) on an allowed port, and
// `unix:` only for a move on this very host, inside the VM's run folder.
import dns from 'node:dns/promises';
import net from 'node:net';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { inCidr } from '../util/cidr.js';
import { isInside } from '../storage/pools.js';

/** Where the source expects a destination to listen. */
export interface ExpectedTarget {
  /** The destination's name (for messages). */
  name: string;
  /** Addresses (literal IPs, or the host name the destination configured) it may answer. */
  addresses: ReadonlySet<string>;
  /** Its migration networks (IPv4 CIDRs): an address inside one is accepted too. */
  networks: readonly string[];
  /** Its migration port range; null: any unprivileged port. */
  ports: { from: number; to: number } | null;
  /** A move on this host: the run folder a `unix:` socket must lie in; absent, `unix:` is refused. */
  runDir?: string;
}

export type StreamTarget = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

const HOSTNAME = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*$/;
const ANY_PORT = { from: 1024, to: 65535 };
/** The VM's own control sockets in its run folder: never a stream's end. */
const CONTROL = new Set(['qmp.sock', 'qmp-admin.sock', 'serial.sock']);

function refused(t: ExpectedTarget, what: string, value: string, why: string): FerryError {
  return new FerryError(
    'E_MIGRATION_URI',
    `Cannot use the ${what} '${value.slice(0, 200)}' that host '${t.name}' answered: ${why}; ` +
      "the VM stays here; check that host's migration address and port range ('ferry host show')",
    { context: { destination: t.name, value: value.slice(0, 200) } },
  );
}

function checkHostPort(t: ExpectedTarget, what: string, value: string, host: string, port: number): void {
  const plain = host.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, '');
  if (!net.isIP(plain) && !HOSTNAME.test(plain)) throw refused(t, what, value, 'the host is not an address');
  const known = t.addresses.has(plain) || (net.isIPv4(plain) && t.networks.some((n) => inCidr(plain, n)));
  if (!known) {
    const expect = [...t.addresses, ...t.networks].join(', ') || 'none';
    throw refused(t, what, value, `${plain} is not an address of that host (expected ${expect})`);
  }
  const range = t.ports ?? ANY_PORT;
  if (!Number.isInteger(port) || port < range.from || port > range.to)
    throw refused(t, what, value, `port ${port} is outside its migration ports ${range.from}-${range.to}`);
}

/** Parses and checks a migration stream URI; throws E_MIGRATION_URI for anything else. */
export function checkStreamUri(uri: string, t: ExpectedTarget): StreamTarget {
  const what = 'migration stream address';
  if (uri.length > 300 || /[\0\s,]/.test(uri)) throw refused(t, what, uri, 'it is malformed');
  const tcp = /^tcp:(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(uri);
  if (tcp) {
    const host = tcp[1] ?? tcp[2] ?? '';
    if (tcp[1] !== undefined && !net.isIPv6(host)) throw refused(t, what, uri, 'the host is not an address');
    const port = Number(tcp[3]);
    checkHostPort(t, what, uri, host, port);
    return { kind: 'tcp', host, port };
  }
  if (uri.startsWith('unix:')) {
    const p = uri.slice('unix:'.length);
    if (!t.runDir) throw refused(t, what, uri, 'a unix socket is accepted only for a move on this host');
    const resolved = path.resolve(t.runDir, p);
    if (!path.isAbsolute(p) || resolved !== p || !isInside(resolved, t.runDir) || resolved === t.runDir)
      throw refused(t, what, uri, `the socket is not inside the VM's run folder ${t.runDir}`);
    if (CONTROL.has(path.basename(resolved))) throw refused(t, what, uri, "it is one of the VM's control sockets");
    return { kind: 'unix', path: resolved };
  }
  throw refused(t, what, uri, 'only tcp:HOST:PORT (or unix: for a move on this host) is accepted');
}

/** Checks the NBD server address of a shared-nothing move's disk exports. */
export function checkNbdAddress(nbd: { host: string; port: number }, t: ExpectedTarget): void {
  const value = `${nbd.host}:${String(nbd.port)}`;
  if (nbd.host.length > 255 || /[\0\s,=]/.test(nbd.host))
    throw refused(t, 'disk export address', value, 'it is malformed');
  checkHostPort(t, 'disk export address', value, nbd.host, nbd.port);
}

/** Checks the TLS name the destination gives (it goes into qemu-img's option string). */
export function checkTlsHostname(name: string, t: ExpectedTarget): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name)) throw refused(t, 'TLS host name', name, 'it is not a host name');
}

/**
 * What the source expects of destination `name`: the address of its agent (`endpoint`, as
 * resolved here), its configured migration address unless it listens on every address, its
 * migration networks and port range (from its host view, read before Prepare).
 */
export async function expectedTarget(
  name: string,
  endpoint: string,
  migration: { address: string; networks: readonly string[]; ports?: string | null | undefined },
  opts: { runDir?: string } = {},
): Promise<ExpectedTarget> {
  const addresses = new Set<string>();
  const host = new URL(endpoint).hostname.replace(/^\[|\]$/g, '');
  if (net.isIP(host)) addresses.add(host);
  else
    for (const a of await dns.lookup(host, { all: true }).catch(() => [])) {
      addresses.add(a.address);
    }
  const configured = migration.address.replace(/^\[|\]$/g, '');
  if (configured && !['0.0.0.0', '::'].includes(configured)) addresses.add(configured);
  const m = migration.ports ? /^(\d{1,5})-(\d{1,5})$/.exec(migration.ports) : null;
  return {
    name,
    addresses,
    networks: migration.networks,
    ports: m ? { from: Number(m[1]), to: Number(m[2]) } : null,
    ...(opts.runDir ? { runDir: opts.runDir } : {}),
  };
}
