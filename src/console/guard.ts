// What every response carries and what every request must show before the console looks
// at it: the security headers, a Host the console is known by (a DNS-rebinding page names
// its own host), and for state-changing requests an Origin (or Referer) of the console
// itself — a cross-site page cannot forge those, whatever cookies its request carries.
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import { urlHost } from './tls.js';

/** No inline script or style, nothing framed, nothing loaded from elsewhere. */
export const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

export function setSecurityHeaders(res: ServerResponse, https: boolean): void {
  res.setHeader('content-security-policy', CSP);
  res.setHeader('x-frame-options', 'DENY');
  res.setHeader('x-content-type-options', 'nosniff');
  res.setHeader('referrer-policy', 'no-referrer');
  res.setHeader('cross-origin-opener-policy', 'same-origin');
  res.setHeader('cross-origin-resource-policy', 'same-origin');
  res.setHeader('permissions-policy', 'camera=(), microphone=(), geolocation=(), usb=(), serial=()');
  if (https) res.setHeader('strict-transport-security', 'max-age=31536000');
}

export interface OriginPolicy {
  https: boolean;
  /** Host names and addresses the console answers to (its certificate's names; loopback for plain HTTP). */
  names: string[];
  /** Extra origins, e.g. the name of a reverse proxy in front of the console (https://console.example). */
  extraOrigins: string[];
}

/** The origins this console is served at when it listens on PORT. */
export function allowedOrigins(p: OriginPolicy, port: number): Set<string> {
  const scheme = p.https ? 'https' : 'http';
  const out = new Set<string>();
  for (const n of p.names) out.add(new URL(`${scheme}://${urlHost(n)}:${port}/`).origin);
  for (const o of p.extraOrigins) out.add(new URL(o).origin);
  return out;
}

function originOf(url: string): string | null {
  try {
    return new URL(url).origin;
  } catch {
    return null;
  }
}

/** Is the Host header one of the console's own? */
export function hostAllowed(origins: Set<string>, headers: IncomingHttpHeaders, https: boolean): boolean {
  const host = headers.host;
  if (!host) return false;
  const o = originOf(`${https ? 'https' : 'http'}://${host}/`);
  return o !== null && origins.has(o);
}

/**
 * The origin a state-changing request comes from: its Origin header, else its Referer's
 * origin; null when it shows neither (or "null", as sandboxed and some privacy modes send):
 * such a request is refused.
 */
export function requestOrigin(headers: IncomingHttpHeaders): string | null {
  const origin = headers.origin;
  if (origin && origin !== 'null') return originOf(origin);
  const referer = headers.referer;
  return referer ? originOf(referer) : null;
}
