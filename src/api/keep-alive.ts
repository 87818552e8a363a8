// How long an idle connection to an agent is kept. A move's first requests to its destination
// (the pre-flight asks three things at once) open three TLS connections when none is kept, and
// moves come minutes apart for an administrator: agents keep their peers' connections for
// minutes, not seconds (docs/performance.md, "A first move after a quiet spell": no handshake
// left in such a move; its time did not change measurably, TLS resumption made them cheap). An
// idle connection costs a socket and a TLS session's memory; a revoked peer's is cut at once
// when the CRL arrives (agent/tls.ts), kept or not.

/** The client closes an idle connection after this long (https.Agent `timeout`). */
export const CLIENT_IDLE_MS = 300_000;

/**
 * The agent's server keeps an idle connection this long (fastify `keepAliveTimeout`): longer
 * than the client, so a request never goes out on a socket the server is just closing.
 */
export const SERVER_KEEPALIVE_MS = CLIENT_IDLE_MS + 15_000;
