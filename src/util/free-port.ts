// A loopback port nobody listens on now, for a lab's agents and etcd members. The port is
// probed and closed again, and taken by its process seconds later (after enrolment, etcd's
// start): callers pass what they have already promised to others in `taken`, and it is added
// there. It is chosen below the kernel's ephemeral range: a port in that range can meanwhile
// become the source port of any outgoing connection on the machine (etcd's and gRPC's clients
// make many), or another lab's `listen(0)`, and the agent then failed with EADDRINUSE (seen
// with two cluster labs side by side).
import fs from 'node:fs/promises';
import net from 'node:net';

/** Where lab ports are drawn from when the ephemeral range leaves room below it. */
const LOWEST = 20_000;

/** The kernel's ephemeral port range (Linux's default when it cannot be read). */
export async function ephemeralRange(): Promise<[number, number]> {
  const text = await fs.readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').catch(() => '');
  const [lo, hi] = text.trim().split(/\s+/).map(Number);
  return lo && hi && lo <= hi ? [lo, hi] : [32768, 60999];
}

/**
 * Binds `host:port` for a moment (0: any port): the port it got, or null when something else
 * holds it or it is not ours to bind. Other errors (no such address here) reject.
 */
export function probePort(host: string, port: number): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE' || err.code === 'EACCES') resolve(null);
      else reject(err);
    });
    s.listen({ host, port, exclusive: true }, () => {
      const got = (s.address() as net.AddressInfo).port;
      s.close(() => {
        resolve(got);
      });
    });
  });
}

export async function freeLoopbackPort(taken: Set<number>): Promise<number> {
  const [lo] = await ephemeralRange();
  const below = lo - LOWEST;
  // Random draws below the range; a machine whose range starts too low gets any free port.
  for (let i = 0; below >= 1000 && i < 200; i++) {
    const port = LOWEST + Math.floor(Math.random() * below);
    if (taken.has(port)) continue;
    if ((await probePort('127.0.0.1', port)) !== null) {
      taken.add(port);
      return port;
    }
  }
  for (;;) {
    const port = await probePort('127.0.0.1', 0);
    if (port !== null && !taken.has(port)) {
      taken.add(port);
      return port;
    }
  }
}
