// NoCloud seeds for cloud-init: an ISO 9660 volume labelled `cidata` holding `user-data`,
// `meta-data` and optionally `network-config`, made with Debian's genisoimage. A VM gets it
// as a read-only disk or CD-ROM; cloud-init finds it by its volume label.
import { createHash } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, InvalidInputError, messageOf } from '../errors.js';
import { run } from '../util/exec.js';

export const SEED_FILE = 'seed.iso';
export const SEED_VOLUME_ID = 'cidata';
/** Per file; cloud-init reads seeds into memory, and a larger one is surely a mistake. */
export const MAX_SEED_FILE_BYTES = 1024 * 1024;

export interface SeedInput {
  /** cloud-config YAML (`#cloud-config` first line) or a script (`#!` first line). */
  userData: string;
  /** meta-data YAML; must set `instance-id`. Default: an instance-id derived from the contents. */
  metaData?: string;
  /** cloud-init network configuration, version 1 or 2. */
  networkConfig?: string;
}

export interface SeedOptions extends SeedInput {
  /** Existing folder that receives seed.iso (replaced if present). */
  dir: string;
  signal?: AbortSignal;
  /** Kill genisoimage after this long (default 30 s). */
  timeoutMs?: number;
}

/** The files of a seed, checked; throws InvalidInputError naming the first problem. */
export function seedFiles(input: SeedInput): Record<string, string> {
  const userData = checkText('user-data', input.userData);
  const first = userData.slice(0, userData.indexOf('\n') === -1 ? undefined : userData.indexOf('\n')).trimEnd();
  if (first !== '#cloud-config' && !first.startsWith('#!')) {
    throw new InvalidInputError(
      `Cannot use the cloud-init user-data: its first line is '${first.slice(0, 40)}'; ` +
        `start it with '#cloud-config' (YAML) or '#!' (a script)`,
      { field: 'userData' },
    );
  }
  const files: Record<string, string> = { 'user-data': userData };
  if (input.networkConfig !== undefined) {
    const net = checkText('network-config', input.networkConfig);
    if (!/^\s*["']?version["']?\s*:\s*["']?[12]["']?\s*$/m.test(net)) {
      throw new InvalidInputError(
        "Cannot use the cloud-init network-config: it has no 'version: 1' or 'version: 2' key; " +
          'write a cloud-init network configuration (version 1 or 2)',
        { field: 'networkConfig' },
      );
    }
    files['network-config'] = net;
  }
  if (input.metaData !== undefined) {
    const meta = checkText('meta-data', input.metaData);
    if (!/(^|[{,\s])["']?instance-id["']?\s*:/m.test(meta)) {
      throw new InvalidInputError(
        "Cannot use the cloud-init meta-data: it sets no 'instance-id'; add a line such as 'instance-id: web1-1'",
        { field: 'metaData' },
      );
    }
    files['meta-data'] = meta;
  } else {
    // Same contents, same instance: cloud-init runs its once-per-instance steps again only when they change.
    const h = createHash('sha256')
      .update(userData)
      .update('\0')
      .update(files['network-config'] ?? '');
    files['meta-data'] = `instance-id: iid-ferry-${h.digest('hex').slice(0, 16)}\n`;
  }
  return files;
}

function checkText(name: string, text: unknown): string {
  const field = { 'user-data': 'userData', 'meta-data': 'metaData', 'network-config': 'networkConfig' }[name];
  if (typeof text !== 'string' || text.trim() === '') {
    throw new InvalidInputError(`Cannot use the cloud-init ${name}: it is empty; give its text`, { field });
  }
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > MAX_SEED_FILE_BYTES) {
    throw new InvalidInputError(
      `Cannot use the cloud-init ${name}: it is ${bytes} bytes, more than ${MAX_SEED_FILE_BYTES}; ` +
        'shorten it, or let it fetch large content at boot',
      { field, bytes },
    );
  }
  if (text.includes('\0')) {
    throw new InvalidInputError(`Cannot use the cloud-init ${name}: it contains NUL bytes; give it as text`, { field });
  }
  return text;
}

/** Writes DIR/seed.iso (replacing it atomically) and returns its path. Bad input changes nothing. */
export async function buildSeed(opts: SeedOptions): Promise<string> {
  const files = seedFiles(opts);
  const st = await fsp.stat(opts.dir).catch(() => null);
  if (!st?.isDirectory()) {
    throw new InvalidInputError(`Cannot build the cloud-init seed in ${opts.dir}: no such folder; create it first`, {
      field: 'dir',
      dir: opts.dir,
    });
  }
  let tmp: string | null = null;
  try {
    tmp = await fsp.mkdtemp(path.join(opts.dir, '.seed-'));
    const names = Object.keys(files).sort();
    for (const [name, text] of Object.entries(files)) await fsp.writeFile(path.join(tmp, name), text, { mode: 0o600 });
    const iso = path.join(tmp, SEED_FILE);
    // Rock Ridge and Joliet keep the lower-case names with dashes that cloud-init looks for.
    const args = ['-quiet', '-input-charset', 'utf-8', '-output', iso, '-volid', SEED_VOLUME_ID, '-joliet', '-rock'];
    const dir = tmp;
    await run('genisoimage', [...args, ...names.map((n) => path.join(dir, n))], {
      signal: opts.signal,
      timeoutMs: opts.timeoutMs ?? 30_000,
    });
    const dest = path.join(opts.dir, SEED_FILE);
    await fsp.chmod(iso, 0o644);
    await fsp.rename(iso, dest);
    return dest;
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError(
      'E_SEED_FAILED',
      `Cannot build the cloud-init seed in ${opts.dir}: ${messageOf(err)}; check that the folder is writable`,
      { context: { dir: opts.dir }, cause: err },
    );
  } finally {
    if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
  }
}
