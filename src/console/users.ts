// The console's users: one JSON file (mode 0600) of names, roles and scrypt password hashes
// with a salt and the cost parameters per user, so the cost can be raised later without
// breaking old entries. Written only by `ferry console user ...` (atomically: a temp file
// created exclusively, then renamed); the console re-reads it when it changes, so a
// removed user or a changed password ends that user's sessions at once.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as z from 'zod';
import { FerryError, InvalidInputError, NotFoundError } from '../errors.js';
import { NAME_RE } from '../api/common.js';
import { CONSOLE_ROLES, type ConsoleRole } from './roles.js';

/** Cost of a new hash: 2^15 × 8 × 128 B = 32 MiB and ~0.1 s per login, scrypt's usual interactive setting. */
const SCRYPT = { N: 32768, r: 8, p: 1, keylen: 64 } as const;
export const MIN_PASSWORD = 8;
const MAX_PASSWORD = 1024;

const Hash = z
  .object({
    algo: z.literal('scrypt'),
    N: z
      .number()
      .int()
      .min(1024)
      .max(2 ** 20)
      .refine((n) => (n & (n - 1)) === 0, 'N must be a power of two'),
    r: z.number().int().min(1).max(32),
    p: z.number().int().min(1).max(16),
    keylen: z.number().int().min(32).max(128),
    salt: z.string().min(16).max(128),
    hash: z.string().min(32).max(256),
  })
  .strict();
export type PasswordHash = z.infer<typeof Hash>;

const User = z
  .object({
    name: z.string().regex(NAME_RE),
    role: z.enum(CONSOLE_ROLES),
    password: Hash,
    createdAt: z.string(),
    changedAt: z.string(),
  })
  .strict();
export type ConsoleUser = z.infer<typeof User>;

const UsersFile = z.object({ version: z.literal(1), users: z.array(User).max(1000) }).strict();

function scrypt(password: string, salt: Buffer, p: Omit<PasswordHash, 'algo' | 'salt' | 'hash'>): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    crypto.scrypt(password, salt, p.keylen, { N: p.N, r: p.r, p: p.p, maxmem: 256 * p.N * p.r }, (err, key) => {
      if (err) reject(err);
      else resolve(key);
    });
  });
}

export async function hashPassword(password: string): Promise<PasswordHash> {
  const salt = crypto.randomBytes(16);
  const key = await scrypt(password, salt, SCRYPT);
  return { algo: 'scrypt', ...SCRYPT, salt: salt.toString('base64'), hash: key.toString('base64') };
}

export async function verifyPassword(h: PasswordHash, password: string): Promise<boolean> {
  const want = Buffer.from(h.hash, 'base64');
  const got = await scrypt(password, Buffer.from(h.salt, 'base64'), h);
  return got.length === want.length && crypto.timingSafeEqual(got, want);
}

// Verifying against this when the name is unknown keeps a login as slow as for a real user,
// so timing does not tell which names exist.
let decoy: Promise<PasswordHash> | undefined;
export async function verifyDecoy(password: string): Promise<false> {
  decoy ??= hashPassword(crypto.randomBytes(16).toString('base64'));
  await verifyPassword(await decoy, password);
  return false;
}

export function checkPassword(password: string): void {
  if (password.length < MIN_PASSWORD)
    throw new InvalidInputError(
      `Cannot use this password: it has ${password.length} characters; give at least ${MIN_PASSWORD}`,
    );
  if (password.length > MAX_PASSWORD)
    throw new InvalidInputError(`Cannot use this password: it is longer than ${MAX_PASSWORD} characters`);
}

function checkName(name: string): void {
  if (!NAME_RE.test(name))
    throw new InvalidInputError(
      `Cannot use user name '${name}': names are 1–63 letters, digits, dot, dash or underscore, ` +
        'starting with a letter or digit',
      { name },
    );
}

export function checkRole(role: string): ConsoleRole {
  if (!(CONSOLE_ROLES as readonly string[]).includes(role))
    throw new InvalidInputError(`Cannot use role '${role}': the roles are ${CONSOLE_ROLES.join(', ')}`, { role });
  return role as ConsoleRole;
}

/** Reads the users file; a missing file is an empty one. Refuses a file others may read. */
export async function readUsers(file: string): Promise<ConsoleUser[]> {
  let raw: string;
  try {
    const st = await fsp.stat(file);
    if ((st.mode & 0o077) !== 0)
      throw new FerryError(
        'E_CONSOLE_USERS_MODE',
        `Cannot use the console's users file ${file}: its mode ${(st.mode & 0o777).toString(8)} lets other ` +
          `accounts read the password hashes; run chmod 600 ${file}`,
        { context: { file } },
      );
    raw = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  let data: unknown;
  try {
    data = JSON.parse(raw);
  } catch (err) {
    throw new FerryError('E_CONSOLE_USERS_INVALID', `Cannot read the console's users file ${file}: not JSON`, {
      context: { file },
      cause: err,
    });
  }
  const r = UsersFile.safeParse(data);
  if (!r.success)
    throw new FerryError(
      'E_CONSOLE_USERS_INVALID',
      `Cannot read the console's users file ${file}: ` +
        r.error.issues.map((i) => `${i.path.join('.')} ${i.message}`).join('; '),
      { context: { file } },
    );
  return r.data.users;
}

async function writeUsers(file: string, users: ConsoleUser[]): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  const fh = await fsp.open(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  try {
    await fh.writeFile(JSON.stringify({ version: 1, users }, null, 2) + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}

export async function addUser(file: string, name: string, role: ConsoleRole, password: string): Promise<ConsoleUser> {
  checkName(name);
  checkPassword(password);
  const users = await readUsers(file);
  if (users.some((u) => u.name === name))
    throw new FerryError(
      'E_CONSOLE_USER_EXISTS',
      `Cannot add console user '${name}': the user exists; change the password with ` +
        `'ferry console user passwd ${name}' or remove it first`,
      { context: { name } },
    );
  const now = new Date().toISOString();
  const user: ConsoleUser = { name, role, password: await hashPassword(password), createdAt: now, changedAt: now };
  await writeUsers(file, [...users, user]);
  return user;
}

function notFound(name: string, file: string): NotFoundError {
  return new NotFoundError(
    'E_CONSOLE_USER_NOT_FOUND',
    `Cannot find console user '${name}' in ${file}; 'ferry console user list' shows the users`,
    { name, file },
  );
}

export async function removeUser(file: string, name: string): Promise<void> {
  const users = await readUsers(file);
  if (!users.some((u) => u.name === name)) throw notFound(name, file);
  await writeUsers(
    file,
    users.filter((u) => u.name !== name),
  );
}

export async function setPassword(file: string, name: string, password: string): Promise<void> {
  checkPassword(password);
  const users = await readUsers(file);
  const u = users.find((x) => x.name === name);
  if (!u) throw notFound(name, file);
  const changed: ConsoleUser = { ...u, password: await hashPassword(password), changedAt: new Date().toISOString() };
  await writeUsers(
    file,
    users.map((x) => (x.name === name ? changed : x)),
  );
}

/** The users file as the console sees it: re-read whenever it changed on disk. */
export class UserStore {
  private users: ConsoleUser[] = [];
  private stamp = '';
  constructor(readonly file: string) {}

  async load(): Promise<ConsoleUser[]> {
    const st = await fsp.stat(this.file).catch(() => null);
    const stamp = st ? `${st.ino}:${st.size}:${st.mtimeMs}:${st.mode}` : 'none';
    if (stamp !== this.stamp) {
      this.users = await readUsers(this.file);
      this.stamp = stamp;
    }
    return this.users;
  }

  async get(name: string): Promise<ConsoleUser | undefined> {
    return (await this.load()).find((u) => u.name === name);
  }
}
