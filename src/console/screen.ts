// A VM's screen in the browser: the console relays the page's websocket (noVNC speaking RFB)
// to the agent's /v1/vms/:name/vnc over its admin certificate, byte for byte. The relay
// belongs to the session (logout or expiry closes it) and ends when either side ends; a
// close from the agent (4000: the VM stopped or moved) reaches the page, which then finds
// the VM's host again and reconnects.
import type { WebSocket } from 'ws';
import type { Session } from './sessions.js';

/** What the relay uses of a websocket (the page's comes from @fastify/websocket, the agent's from ws). */
type Socket = Pick<WebSocket, 'readyState' | 'OPEN' | 'CLOSED' | 'bufferedAmount' | 'send' | 'close' | 'on'>;

/** The subprotocol noVNC asks for and the console answers with. */
export const SCREEN_PROTOCOL = 'binary';
/** The page sends the session's CSRF token as a second subprotocol: `ferry-csrf.TOKEN`. */
const CSRF_PREFIX = 'ferry-csrf.';
/** What the page may send before the agent answers (RFB's handshake is a few bytes). */
const MAX_EARLY = 256 * 1024;
/** A page this far behind is dropped rather than buffered without end. */
const MAX_BUFFERED = 8 * 1024 * 1024;
const CONNECT_TIMEOUT_MS = 20_000;

/** The CSRF token a websocket upgrade carries in Sec-WebSocket-Protocol ('' when none). */
export function csrfFromProtocols(header: string | string[] | undefined): string {
  const all = (Array.isArray(header) ? header.join(',') : (header ?? '')).split(',').map((p) => p.trim());
  const p = all.find((x) => x.startsWith(CSRF_PREFIX));
  return p ? p.slice(CSRF_PREFIX.length) : '';
}

/** May a close code be sent on by us (1005, 1006 and 1015 only describe a close)? */
function sendable(code: number): boolean {
  return code === 1000 || (code >= 1001 && code <= 1014 && ![1004, 1005, 1006].includes(code)) || code >= 3000;
}

/** A close reason must fit in a control frame (123 bytes). */
function reason(s: string): string {
  return Buffer.byteLength(s) <= 120 ? s : `${Buffer.from(s).subarray(0, 117).toString('utf8')}...`;
}

/** Relays PAGE to the websocket OPEN gives (the agent's), for session S. */
export function relayScreen(page: Socket, s: Session, open: () => Promise<Socket>): void {
  const early: Buffer[] = [];
  let earlyBytes = 0;
  let agent: Socket | null = null;
  let ended = false;
  const end = (code: number, why: string): void => {
    if (ended) return;
    ended = true;
    clearTimeout(timer);
    s.closers.delete(closer);
    page.close(sendable(code) ? code : 1011, reason(why));
    if (agent && agent.readyState !== agent.CLOSED) agent.close(1000);
  };
  const closer = (): void => end(4401, 'the session ended; log in again');
  s.closers.add(closer);
  const timer = setTimeout(() => end(4000, 'the host did not answer'), CONNECT_TIMEOUT_MS);
  page.on('message', (data: Buffer) => {
    if (agent && agent.readyState === agent.OPEN) agent.send(data);
    else if ((earlyBytes += data.length) > MAX_EARLY) end(1009, 'too much sent before the screen opened');
    else early.push(data);
  });
  page.on('close', () => end(1000, 'closed'));
  page.on('error', () => end(1011, 'the page connection failed'));
  open().then(
    (a) => {
      agent = a;
      // The agent refused (the VM is not running there, or has no display): the page looks
      // again. Closing a websocket still connecting emits 'error' too, so it is listened at once.
      a.on('error', (err: Error) => end(4000, `host: ${err.message}`));
      if (ended) {
        a.close(1000);
        return;
      }
      a.on('open', () => {
        clearTimeout(timer);
        for (const b of early.splice(0)) a.send(b);
      });
      a.on('message', (data: Buffer) => {
        if (page.readyState !== page.OPEN) return;
        if (page.bufferedAmount > MAX_BUFFERED) end(1013, 'the page fell too far behind; reconnect');
        else page.send(data);
      });
      a.on('close', (code: number, why: Buffer) => end(code, why.toString() || 'the screen closed'));
    },
    (err: unknown) => end(4000, `host: ${err instanceof Error ? err.message : String(err)}`),
  );
}
