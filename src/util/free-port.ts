// A loopback port nobody listens on now, for a lab's agents and etcd members. The port is
// probed and closed again, so the kernel may hand it out twice: callers pass what they have
// already promised to others in `taken`, and it is added there.
import net from 'node:net';

export async function freeLoopbackPort(taken: Set<number>): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    if (!taken.has(port)) {
      taken.add(port);
      return port;
    }
  }
}
