// One-time join tokens. The admin machine is not a server, so a token does not open a
// connection: it carries what the host needs to trust the domain (the CA's fingerprint)
// and a secret that lets the host prove, inside its certificate request, that the admin
// meant this request. `ferry host join TOKEN` writes the request with that proof;
// `ferry domain sign` checks it (known token, not used, not expired, same name and
// address) and uses the token up. The secret never appears in the certificate.
import crypto, { type KeyObject } from 'node:crypto';
import * as z from 'zod';
import { FerryError, InvalidInputError } from '../errors.js';
import { NAME_RE } from '../api/common.js';
import { addressProblem } from './x509.js';

const PREFIX = 'ferry-join-1.';

const Payload = z.object({
  /** Domain id. */
  d: z.string(),
  /** Token id. */
  i: z.string().regex(/^[0-9a-f]{16}$/),
  n: z.string().regex(NAME_RE),
  a: z.string(),
  p: z.number().int().min(1).max(65535),
  /** CA fingerprint (sha256 hex). */
  f: z.string().regex(/^[0-9a-f]{64}$/),
  /** Expiry, ISO time. */
  e: z.string(),
  /** Secret, base64url (32 bytes). */
  s: z.string().min(40),
});

export interface JoinToken {
  domainId: string;
  id: string;
  name: string;
  address: string;
  port: number;
  caFingerprint: string;
  expiresAt: Date;
  secret: string;
}

export function encodeToken(t: JoinToken): string {
  const p: z.infer<typeof Payload> = {
    d: t.domainId,
    i: t.id,
    n: t.name,
    a: t.address,
    p: t.port,
    f: t.caFingerprint,
    e: t.expiresAt.toISOString(),
    s: t.secret,
  };
  return PREFIX + Buffer.from(JSON.stringify(p)).toString('base64url');
}

export function decodeToken(s: string): JoinToken {
  const bad = (why: string): InvalidInputError =>
    new InvalidInputError(
      `Cannot use the join token: ${why}; copy the whole token 'ferry domain token' printed (it starts with ${PREFIX})`,
    );
  const text = s.trim();
  if (!text.startsWith(PREFIX)) throw bad('it is not a Ferry join token');
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(text.slice(PREFIX.length), 'base64url').toString('utf8'));
  } catch {
    throw bad('it is damaged');
  }
  const r = Payload.safeParse(raw);
  if (!r.success || addressProblem(r.data.a) || Number.isNaN(Date.parse(r.data.e))) throw bad('it is damaged');
  const p = r.data;
  return {
    domainId: p.d,
    id: p.i,
    name: p.n,
    address: p.a,
    port: p.p,
    caFingerprint: p.f,
    expiresAt: new Date(p.e),
    secret: p.s,
  };
}

export function newTokenId(): string {
  return crypto.randomBytes(8).toString('hex');
}

export function newSecret(): string {
  return crypto.randomBytes(32).toString('base64url');
}

/** The proof a request carries: HMAC(secret, name ‖ public key), bound to the key that signs the request. */
export function tokenProof(secret: string, name: string, publicKey: KeyObject): string {
  const mac = crypto
    .createHmac('sha256', Buffer.from(secret, 'base64url'))
    .update(name + '\n')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex');
  return mac;
}

/** challengePassword attribute value: ferry-token:<id>:<proof>. */
export function challengeFor(id: string, proof: string): string {
  return `ferry-token:${id}:${proof}`;
}

export function parseChallenge(c: string): { id: string; proof: string } {
  const [, id, proof] = /^ferry-token:([0-9a-f]{16}):([0-9a-f]{64})$/.exec(c) ?? [];
  if (!id || !proof)
    throw new InvalidInputError(
      "Cannot sign the request: it carries a challenge that is not a Ferry join token's proof; " +
        "make the request with 'ferry host join TOKEN' or 'ferry host init'",
    );
  return { id, proof };
}

/** Parses --ttl: 30s, 15m, 1h, 2d; at most 7 days. */
export function parseTtl(s: string): number {
  const m = /^(\d+)\s*([smhd])$/.exec(s.trim());
  const unit = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
  const ms = m ? Number(m[1]) * unit[m[2] as keyof typeof unit] : NaN;
  if (!m || ms < 1000 || ms > 7 * 86_400_000)
    throw new InvalidInputError(`Cannot use --ttl '${s}': give a duration from 1s to 7d, such as 30m or 1h`);
  return ms;
}

export class TokenRefusedError extends FerryError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super('E_TOKEN_REFUSED', message, { context });
  }
}
