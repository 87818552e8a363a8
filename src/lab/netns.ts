// Network namespaces for `ferry lab up --netns`: each lab host gets its own namespace with
// two links, so a test can cut one link of one host.
//
//   root namespace                         namespace ferry-<id>-a (host-a)
//   bridge fy<id>m 10.241.S.1/24  ─veth─  mgmt0 10.241.S.10/24   (API, peer calls, CLI)
//   bridge fy<id>g (no address)   ─veth─  mig0  10.242.S.10/24   (QEMU streams, NBD)
//
// The management bridge has an address in the root namespace so the CLI reaches the
// agents; the migration bridge has none, so only the lab hosts share that network. No
// default routes, no forwarding, no NAT: nothing leaves the machine. Every name starts
// with a prefix derived from the lab folder (`<id>` = 6 hex digits of its hash), so
// parallel labs never clash and `down` can remove leftovers by prefix alone.
import crypto from 'node:crypto';
import { FerryError } from '../errors.js';
import { run } from '../util/exec.js';

export type LinkKind = 'management' | 'migration';

export interface NetnsPlan {
  id: string;
  subnet: number;
}

export interface NetnsHost {
  /** The namespace the host's agent (and its QEMUs) run in. */
  netns: string;
  /** Management address (the agent listens here). */
  address: string;
  /** Address on the private migration network. */
  migrationAddress: string;
}

export const AGENT_PORT = 7443;

export function labNetId(dir: string): string {
  return crypto.createHash('sha256').update(dir).digest('hex').slice(0, 6);
}

const nsPrefix = (id: string): string => `ferry-${id}-`;
const linkPrefix = (id: string): string => `fy${id}`;
const bridge = (id: string, kind: LinkKind): string => `${linkPrefix(id)}${kind === 'management' ? 'm' : 'g'}`;
/** The root-namespace end of a host's veth pair (≤ 15 characters: fy + 6 + letter + m|g). */
export const rootVeth = (id: string, index: number, kind: LinkKind): string =>
  `${linkPrefix(id)}${String.fromCharCode(97 + index)}${kind === 'management' ? 'm' : 'g'}`;
const insideName = (kind: LinkKind): string => (kind === 'management' ? 'mgmt0' : 'mig0');

export function managementNetwork(p: NetnsPlan): string {
  return `10.241.${p.subnet}.0/24`;
}
export function migrationNetwork(p: NetnsPlan): string {
  return `10.242.${p.subnet}.0/24`;
}

export function netnsHost(p: NetnsPlan, index: number): NetnsHost {
  return {
    netns: `${nsPrefix(p.id)}${String.fromCharCode(97 + index)}`,
    address: `10.241.${p.subnet}.${10 + index}`,
    migrationAddress: `10.242.${p.subnet}.${10 + index}`,
  };
}

const ip = async (args: string[], signal?: AbortSignal): Promise<string> =>
  (await run('ip', args, { timeoutMs: 15_000, ...(signal ? { signal } : {}) })).stdout;

async function namespaces(): Promise<string[]> {
  return (await ip(['netns', 'list']))
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter(Boolean);
}

async function links(): Promise<string[]> {
  return (await ip(['-o', 'link', 'show']))
    .split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1] ?? '')
    .filter(Boolean);
}

/**
 * Picks the lab's subnet: the one its hash names, or the next one no interface of this
 * machine uses yet (another lab, or anything else on 10.241.S.0/24).
 */
export async function planNetns(dir: string): Promise<NetnsPlan> {
  const id = labNetId(dir);
  const used = new Set(
    [...(await ip(['-o', '-4', 'addr', 'show'])).matchAll(/inet (10\.24[12])\.(\d+)\./g)].map((m) => Number(m[2])),
  );
  const start = parseInt(id, 16) % 250;
  for (let k = 0; k < 250; k++) {
    const s = ((start + k) % 250) + 1;
    if (!used.has(s)) return { id, subnet: s };
  }
  throw new FerryError(
    'E_LAB_NETWORK',
    'Cannot start the lab with --netns: every subnet 10.241.1-250.0/24 is in use; stop other labs first',
    {},
  );
}

/** Creates whatever of the lab's namespaces, bridges and veths is missing (idempotent). */
export async function ensureNetns(p: NetnsPlan, hosts: number, signal?: AbortSignal): Promise<void> {
  const haveNs = new Set(await namespaces());
  const haveLinks = new Set(await links());
  for (const kind of ['management', 'migration'] as const) {
    const br = bridge(p.id, kind);
    if (!haveLinks.has(br)) {
      await ip(['link', 'add', br, 'type', 'bridge'], signal);
      if (kind === 'management') await ip(['addr', 'add', `10.241.${p.subnet}.1/24`, 'dev', br], signal);
    }
    await ip(['link', 'set', br, 'up'], signal);
  }
  for (let i = 0; i < hosts; i++) {
    const h = netnsHost(p, i);
    if (!haveNs.has(h.netns)) await ip(['netns', 'add', h.netns], signal);
    await ip(['-n', h.netns, 'link', 'set', 'lo', 'up'], signal);
    for (const kind of ['management', 'migration'] as const) {
      const outer = rootVeth(p.id, i, kind);
      const inner = insideName(kind);
      if (!haveLinks.has(outer)) {
        // A half-made pair (the inner end left over) would block the name inside: remove it.
        await ip(['-n', h.netns, 'link', 'del', inner], signal).catch(() => undefined);
        await ip(['link', 'add', outer, 'type', 'veth', 'peer', 'name', inner, 'netns', h.netns], signal);
        await ip(['link', 'set', outer, 'master', bridge(p.id, kind), 'up'], signal);
        const addr = kind === 'management' ? h.address : h.migrationAddress;
        await ip(['-n', h.netns, 'addr', 'add', `${addr}/24`, 'dev', inner], signal);
        await ip(['-n', h.netns, 'link', 'set', inner, 'up'], signal);
      }
    }
  }
}

/** Cuts (down) or restores (up) one link of one host at its root-namespace end: a pulled cable. */
export async function setLink(
  p: NetnsPlan,
  index: number,
  kind: LinkKind,
  up: boolean,
  signal?: AbortSignal,
): Promise<void> {
  await ip(['link', 'set', rootVeth(p.id, index, kind), up ? 'up' : 'down'], signal);
}

/** Which of a host's links are up (false = cut or missing). */
export async function linkStates(p: NetnsPlan, index: number): Promise<Record<LinkKind, boolean>> {
  const state = async (kind: LinkKind): Promise<boolean> => {
    const out = await ip(['-o', 'link', 'show', 'dev', rootVeth(p.id, index, kind)]).catch(() => '');
    return /<[^>]*\bUP\b[^>]*>/.test(out);
  };
  return { management: await state('management'), migration: await state('migration') };
}

/**
 * Removes every namespace and link whose name starts with the lab's prefix (also leftovers
 * of a crashed run). Processes still inside a namespace keep it alive, so stop them first.
 */
export async function removeNetns(dir: string): Promise<string[]> {
  const id = labNetId(dir);
  const removed: string[] = [];
  for (const ns of (await namespaces()).filter((n) => n.startsWith(nsPrefix(id)))) {
    await ip(['netns', 'del', ns]).catch(() => undefined);
    removed.push(ns);
  }
  // Deleting a namespace deletes the veth ends inside it, and with them the pairs; the
  // bridges (and any veth end still here) go by name.
  for (const l of (await links()).filter((n) => n.startsWith(linkPrefix(id)))) {
    await ip(['link', 'del', l]).catch(() => undefined);
    removed.push(l);
  }
  return removed;
}
