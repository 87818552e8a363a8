// The TLS server name (SNI) a client sends: RFC 6066 allows only DNS names there, and Node
// warns (DEP0123, "Setting the TLS ServerName to an IP address…") when given an IP address.
import net from 'node:net';

/** `host` itself for a DNS name; '' (send no server name) for an IPv4 or IPv6 address. */
export function tlsServerName(host: string): string {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  return net.isIP(bare) ? '' : bare;
}
