// The domain's records on the admin machine, beside the CA: the host inventory
// (hosts.json: who is enrolled, with which certificate serials) and the join tokens
// (tokens.json). Every change happens under one lock file, so two admin commands never
// interleave, and every file is replaced atomically.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as z from 'zod';
import { FerryError } from '../errors.js';
import { sleep } from '../util/exec.js';
import { writeAtomic } from './request.js';

const CertRecord = z.object({
  serial: z.string(),
  notBefore: z.string(),
  notAfter: z.string(),
  /** SHA-256 of the certified public key (spkiSha256). */
  publicKey: z.string(),
  revokedAt: z.string().nullable(),
});
export type CertRecord = z.infer<typeof CertRecord>;

const HostRecord = z.object({
  name: z.string(),
  address: z.string(),
  port: z.number().int(),
  state: z.enum(['enrolled', 'revoked']),
  enrolledAt: z.string(),
  certificates: z.array(CertRecord),
});
export type HostRecord = z.infer<typeof HostRecord>;

const Inventory = z.object({ version: z.literal(1), hosts: z.array(HostRecord) });
export type Inventory = z.infer<typeof Inventory>;

const TokenRecord = z.object({
  id: z.string(),
  name: z.string(),
  address: z.string(),
  port: z.number().int(),
  createdAt: z.string(),
  expiresAt: z.string(),
  /** The shared secret (base64url) until the token is used; then null. */
  secret: z.string().nullable(),
  usedAt: z.string().nullable(),
  usedSerial: z.string().nullable(),
});
export type TokenRecord = z.infer<typeof TokenRecord>;
const Tokens = z.object({ version: z.literal(1), tokens: z.array(TokenRecord) });
export type Tokens = z.infer<typeof Tokens>;

export const inventoryFile = (domainDir: string): string => path.join(domainDir, 'hosts.json');
export const tokensFile = (domainDir: string): string => path.join(domainDir, 'tokens.json');
const lockFile = (domainDir: string): string => path.join(domainDir, '.lock');

async function readJson<T>(file: string, schema: z.ZodType<T>, empty: T): Promise<T> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    return empty;
  }
  const r = schema.safeParse(JSON.parse(text));
  if (!r.success)
    throw new FerryError(
      'E_DOMAIN_STATE',
      `Cannot read ${file}: it is not a valid Ferry domain file (${r.error.issues[0]?.message ?? 'bad'}); ` +
        `restore it from a backup of the domain folder`,
      { context: { file } },
    );
  return r.data;
}

export async function readInventory(domainDir: string): Promise<Inventory> {
  return readJson(inventoryFile(domainDir), Inventory, { version: 1, hosts: [] });
}

export async function writeInventory(domainDir: string, inv: Inventory): Promise<void> {
  await writeAtomic(inventoryFile(domainDir), JSON.stringify(inv, null, 2) + '\n', 0o600);
}

export async function readTokens(domainDir: string): Promise<Tokens> {
  return readJson(tokensFile(domainDir), Tokens, { version: 1, tokens: [] });
}

export async function writeTokens(domainDir: string, t: Tokens): Promise<void> {
  await writeAtomic(tokensFile(domainDir), JSON.stringify(t, null, 2) + '\n', 0o600);
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs `fn` holding the domain's lock (a file with the holder's pid; a dead holder's lock is
 * taken over). Waits up to `timeoutMs` for another admin command to finish.
 */
export async function withDomainLock<T>(
  domainDir: string,
  fn: () => Promise<T>,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<T> {
  const file = lockFile(domainDir);
  const until = Date.now() + (opts.timeoutMs ?? 15_000);
  for (;;) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx', mode: 0o600 });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(fs.readFileSync(file, 'utf8').trim());
      if (!holder || !pidAlive(holder)) {
        fs.rmSync(file, { force: true });
        continue;
      }
      if (Date.now() > until)
        throw new FerryError(
          'E_DOMAIN_BUSY',
          `Cannot change the domain in ${domainDir}: another ferry command (pid ${holder}) holds its lock; ` +
            `wait for it to finish`,
          {},
        );
      await sleep(100, opts.signal);
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(file, { force: true });
  }
}
