// The hostile host's client: its own host certificate (nothing else) and raw HTTPS requests, so a
// test sends exactly what an attacker would, not what Ferry's client would let through.
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';

/** A mutual-TLS agent with the certificate of the host whose data folder is `dataDir`. */
export function hostAgent(dataDir: string): https.Agent {
  const tls = path.join(dataDir, 'tls');
  return new https.Agent({
    ca: fs.readFileSync(path.join(tls, 'ca.crt')),
    cert: fs.readFileSync(path.join(tls, 'host.crt')),
    key: fs.readFileSync(path.join(tls, 'host.key')),
  });
}

/** GETs `url`; resolves with the status and the raw body, whatever the status. */
export function get(
  agent: https.Agent,
  endpoint: string,
  url: string,
  timeoutMs = 60_000,
): Promise<{ status: number; body: string }> {
  return send(agent, endpoint, 'GET', url, undefined, timeoutMs);
}

/** POSTs `body` as JSON; resolves with the status and the raw body, whatever the status. */
export function post(
  agent: https.Agent,
  endpoint: string,
  url: string,
  body: unknown,
  timeoutMs = 60_000,
): Promise<{ status: number; body: string }> {
  return send(agent, endpoint, 'POST', url, body, timeoutMs);
}

/** POSTs `bytes` as they are, with `contentType`; resolves with the status and the raw body. */
export function postBytes(
  agent: https.Agent,
  endpoint: string,
  url: string,
  bytes: Buffer,
  contentType: string,
  timeoutMs = 60_000,
): Promise<{ status: number; body: string }> {
  return send(agent, endpoint, 'POST', url, bytes, timeoutMs, contentType);
}

function send(
  agent: https.Agent,
  endpoint: string,
  method: 'GET' | 'POST',
  url: string,
  body: unknown,
  timeoutMs: number,
  contentType = 'application/json',
): Promise<{ status: number; body: string }> {
  const u = new URL(endpoint);
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: u.hostname,
        port: Number(u.port),
        method,
        path: url,
        agent,
        timeout: timeoutMs,
        headers: method === 'POST' ? { 'content-type': contentType } : {},
      },
      (res) => {
        let b = '';
        res.on('data', (c: Buffer) => (b += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} timed out`)));
    req.on('error', reject);
    req.end(method !== 'POST' ? undefined : Buffer.isBuffer(body) ? body : JSON.stringify(body));
  });
}
