// IPv4 address maths for the migration network: which of a host's addresses lies in which
// configured network (CIDR). Pure functions, no I/O.

/** An IPv4 address as an unsigned 32-bit number, or null when it is not a dotted quad. */
export function ipv4ToNumber(ip: string): number | null {
  const parts = ip.split('.');
  if (parts.length !== 4) return null;
  let n = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return null;
    n = n * 256 + Number(p);
  }
  return n;
}

/** Is `ip` inside `cidr` (e.g. 10.0.0.7 in 10.0.0.0/24)? False for anything that is not IPv4. */
export function inCidr(ip: string, cidr: string): boolean {
  const [base = '', bitsText = ''] = cidr.split('/');
  const bits = Number(bitsText);
  const a = ipv4ToNumber(ip);
  const b = ipv4ToNumber(base);
  if (a === null || b === null || !/^\d{1,2}$/.test(bitsText) || bits > 32) return false;
  // 2^(32-bits) addresses per network: compare the network numbers.
  const size = 2 ** (32 - bits);
  return Math.floor(a / size) === Math.floor(b / size);
}

/**
 * The address to receive a migration on: one of `own` inside the `networks`; when `peer` is
 * an IPv4 address, one in a network that also holds the peer comes first. Null when none of
 * the addresses is in any of the networks.
 */
export function addressInNetworks(own: readonly string[], networks: readonly string[], peer?: string): string | null {
  const candidates = own.filter((a) => networks.some((n) => inCidr(a, n)));
  if (peer !== undefined) {
    const facing = candidates.find((a) => networks.some((n) => inCidr(a, n) && inCidr(peer, n)));
    if (facing !== undefined) return facing;
  }
  return candidates[0] ?? null;
}
