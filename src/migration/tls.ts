// TLS for migration streams with the domain's host certificates: QEMU's tls-creds-x509
// reads fixed file names from a folder, so the agent lays its certificate out that way.
// Several moves may start at once and QEMU reads these files while a move adds its TLS
// object: a file is only ever replaced by rename (never rewritten in place), and only when
// its content changed (a renewed certificate), so a reader sees the old or the new file whole.
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { QmpClient } from '../qemu/qmp.js';
import { run } from '../util/exec.js';
import { letQemuRead, letQemuThrough, shareWithQemu } from '../qemu/user.js';

interface TlsSource {
  ca: string;
  cert: string;
  key: string;
  /** The domain's revocation list, when the admin pushed one. */
  crl?: string;
}

/** One layout at a time per folder: concurrent callers share the same pending work. */
const pending = new Map<string, Promise<string>>();
/** Per folder, what its last layout was made from (`stampOf`): unchanged, it is not made again. */
const laidOut = new Map<string, string>();

export function qemuTlsDir(tls: TlsSource, dataDir: string): Promise<string> {
  const dir = path.join(dataDir, 'tls', 'qemu');
  const prev = pending.get(dir) ?? Promise.resolve(dir);
  const next = prev
    .catch(() => dir)
    .then(async () => {
      // Every move asks on both hosts; laying the folder out reads and compares each file (~60
      // calls through the thread pool, ~2 ms of the agent's CPU): twelve stats tell nothing changed.
      if (laidOut.get(dir) === (await stampOf(tls, dir))) return dir;
      laidOut.delete(dir);
      await layout(tls, dir);
      laidOut.set(dir, await stampOf(tls, dir));
      return dir;
    });
  pending.set(dir, next);
  return next;
}

/** The files QEMU reads from the folder (`layout`). */
const LAID_OUT = [
  'ca-cert.pem',
  'server-cert.pem',
  'server-key.pem',
  'client-cert.pem',
  'client-key.pem',
  'ca-crl.pem',
  'dh-params.pem',
];

/**
 * The source files (a renewed certificate, a new CRL), the folder (a file added, removed or
 * renamed in) and each of its files (one rewritten in place is laid out again, as before the
 * cache), as stat sees them.
 */
async function stampOf(tls: TlsSource, dir: string): Promise<string> {
  const files = [tls.ca, tls.cert, tls.key, tls.crl, dir, ...LAID_OUT.map((f) => path.join(dir, f))];
  const stats = await Promise.all(files.map((f) => (f ? fsp.stat(f).catch(() => null) : Promise.resolve(null))));
  return stats.map((s) => (s ? `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}` : '-')).join('|');
}

async function layout(tls: TlsSource, dir: string): Promise<string> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  // QEMU as its own user (qemu.user): it may pass through the folders (search bit only) and
  // read the files through its group; the keys are root:GROUP 0640.
  await letQemuThrough(path.dirname(dir));
  await letQemuThrough(dir);
  const files: Array<[string, string]> = [
    [tls.ca, 'ca-cert.pem'],
    [tls.cert, 'server-cert.pem'],
    [tls.key, 'server-key.pem'],
    [tls.cert, 'client-cert.pem'],
    [tls.key, 'client-key.pem'],
  ];
  for (const [from, to] of files) {
    await replaceIfChanged(await fsp.readFile(from), path.join(dir, to), to.endsWith('key.pem') ? 0o600 : 0o644);
  }
  // The domain's revocation list, when the admin pushed one: GnuTLS refuses a revoked peer.
  const crl = path.join(dir, 'ca-crl.pem');
  const crlContent = tls.crl ? await fsp.readFile(tls.crl).catch(() => null) : null;
  if (crlContent) await replaceIfChanged(crlContent, crl, 0o644);
  else await fsp.rm(crl, { force: true });
  // Without DH parameters QEMU's TLS server computes them at every migration (up to 0.5 s):
  // use the standard RFC 7919 group, made once.
  const dh = path.join(dir, 'dh-params.pem');
  if (!(await exists(dh))) {
    const tmp = `${dh}.tmp-${process.pid}`;
    await run('openssl', ['genpkey', '-genparam', '-algorithm', 'DH', '-pkeyopt', 'group:ffdhe2048', '-out', tmp], {
      timeoutMs: 30_000,
    });
    await fsp.rename(tmp, dh);
  }
  await letQemuRead(dh);
  return dir;
}

async function replaceIfChanged(content: Buffer, file: string, mode: number): Promise<void> {
  // For QEMU's user: a key root:GROUP 0640, the rest readable by GROUP (the umask may hide it).
  const grant = mode === 0o600 ? shareWithQemu : letQemuRead;
  const cur = await fsp.readFile(file).catch(() => null);
  if (cur?.equals(content)) {
    await grant(file);
    return;
  }
  const tmp = `${file}.tmp-${crypto.randomUUID()}`;
  await fsp.writeFile(tmp, content, { mode, flag: 'wx' });
  await grant(tmp);
  await fsp.rename(tmp, file);
}

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}

/**
 * GnuTLS priority for the migration stream and the disks' NBD connections. GnuTLS's NORMAL
 * puts AES-256-GCM first; on x86 with AES-NI, AES-128-GCM encrypts about twice as fast (here
 * 2.9 against 1.6 GB/s per core, `openssl speed -evp`), and under TLS the copy is CPU-bound in
 * QEMU's main thread on both ends. Only AEAD suites; both ends are QEMU with this setting.
 */
export const TLS_PRIORITY = 'NORMAL:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305';

/** Adds a tls-creds-x509 object (server on the destination, client on the source). */
export async function addTlsCreds(
  qmp: QmpClient,
  id: string,
  endpoint: 'server' | 'client',
  dir: string,
  signal?: AbortSignal,
): Promise<void> {
  await qmp.execute(
    'object-add',
    { 'qom-type': 'tls-creds-x509', id, endpoint, dir, 'verify-peer': true, priority: TLS_PRIORITY },
    { signal },
  );
}
