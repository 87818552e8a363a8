// Counts the bytes a lab host receives per interface, inside its network namespace, with
// nftables counters: TCP that is not the agents' API (port 7443 either way: the CLI's and
// the peer agent's calls, and this agent's calls out) is migration stream or NBD traffic.
// Counted at prerouting, so a packet is counted on the interface it arrives on whatever
// the routing (or reverse-path filter) does with it next.
import { run } from '../../src/util/exec.js';
import { AGENT_PORT } from '../../src/lab/netns.js';

const TABLE = 'ferry_faults';
/** The lab's interface names inside a host's namespace (src/lab/netns.ts). */
const IFACES = { migration: 'mig0', management: 'mgmt0', loopback: 'lo' } as const;
type Iface = keyof typeof IFACES;
export type StreamBytes = Record<Iface, number>;

const nft = async (netns: string, args: string[], input?: string): Promise<string> =>
  (
    await run('ip', ['netns', 'exec', netns, 'nft', ...args], {
      timeoutMs: 15_000,
      ...(input !== undefined ? { input } : {}),
    })
  ).stdout;

/** The counters' table, as `nft -f` reads it (exported for a syntax check without a namespace). */
export function countersScript(): string {
  const names = Object.keys(IFACES) as Iface[];
  return [
    `table inet ${TABLE} {`,
    ...names.map((n) => `  counter ${n} { }`),
    '  chain prerouting {',
    '    type filter hook prerouting priority -300; policy accept;',
    // Two accepts (they end this chain only), not `tcp dport != P tcp sport != P`: nft 1.0.6
    // merges those into one test of both ports, which lets everything but P-to-P through.
    `    tcp dport ${AGENT_PORT} accept`,
    `    tcp sport ${AGENT_PORT} accept`,
    ...names.map((n) => `    iifname "${IFACES[n]}" meta l4proto tcp counter name "${n}"`),
    '  }',
    '}',
    '',
  ].join('\n');
}

/** (Re)creates the counters in `netns`, starting at zero. */
export async function startStreamCounters(netns: string): Promise<void> {
  await nft(netns, ['delete', 'table', 'inet', TABLE]).catch(() => undefined);
  await nft(netns, ['-f', '-'], countersScript());
}

/** Bytes received per interface since `startStreamCounters`. */
export async function readStreamCounters(netns: string): Promise<StreamBytes> {
  const out = JSON.parse(await nft(netns, ['-j', 'list', 'table', 'inet', TABLE])) as {
    nftables: Array<{ counter?: { name: string; bytes: number } }>;
  };
  const bytes = (n: Iface): number => {
    const c = out.nftables.find((x) => x.counter?.name === n)?.counter;
    if (!c) throw new Error(`nft counter '${n}' is missing in ${netns}`);
    return c.bytes;
  };
  return { migration: bytes('migration'), management: bytes('management'), loopback: bytes('loopback') };
}

/** Removes the counters (the namespace outlives a cell). */
export async function stopStreamCounters(netns: string): Promise<void> {
  await nft(netns, ['delete', 'table', 'inet', TABLE]).catch(() => undefined);
}
