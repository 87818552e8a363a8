// `ferry lab up --package DEB`: each lab host is a "machine" of its own on this one, running
// Ferry as the Debian package installs it. The .deb is unpacked once (DIR/package); each
// host gets its own network namespace (netns.ts), and a mount and UTS namespace in which
//
//   /usr  = the package's usr over this machine's /usr (read-only: /usr/bin/ferry, /usr/lib/ferry)
//   /etc  = this machine's /etc with the host's own layer DIR/hosts/NAME/root/etc (/etc/ferry)
//   /var  = this machine's /var with the host's own layer DIR/hosts/NAME/root/var (/var/lib/ferry)
//
// and hostname NAME. Its agent runs the unit's ExecStart at the unit's Nice=; it is enrolled
// with the package's own commands run inside that host (`ferry host init` makes the key in
// the host's /etc/ferry/tls, `ferry domain sign` on the admin side, `ferry host install-cert`),
// so a host's private key exists only in its own layer. Everything else (QEMU, etcd, the
// lab folder with the shared pool) is this machine's.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, InvalidInputError, messageOf } from '../errors.js';
import { run } from '../util/exec.js';

/** Where the package is unpacked, and what a lab host's layers are. */
export const packageRoot = (dir: string): string => path.join(dir, 'package');
export const hostRoot = (dir: string, name: string): string => path.join(dir, 'hosts', name, 'root');
/** The host's /var/lib/ferry as seen from this machine (its layer: every file in it was written there). */
export const packagedDataDir = (dir: string, name: string): string =>
  path.join(hostRoot(dir, name), 'var', 'lib', 'ferry');

// The paths the packaged layout uses inside a host (the unit's and `ferry host init`'s defaults).
const INSIDE_DATA = '/var/lib/ferry';
const UNIT = 'lib/systemd/system/ferry-agent.service';

export interface PackageInfo {
  deb: string;
  sha256: string;
}

async function sha256(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  for await (const c of fs.createReadStream(file)) h.update(c as Buffer);
  return h.digest('hex');
}

/** Unpacks the .deb into DIR/package unless that very file is unpacked there already. */
export async function unpackPackage(dir: string, debIn: string, signal?: AbortSignal): Promise<PackageInfo> {
  const deb = path.resolve(debIn);
  if (!deb.endsWith('.deb') || !fs.existsSync(deb))
    throw new InvalidInputError(
      `Cannot build a lab from '${debIn}': it is not a .deb file; build one with 'npm run package' ` +
        '(dist/ferry_<version>_amd64.deb)',
      { deb },
    );
  const sum = await sha256(deb);
  const root = packageRoot(dir);
  const stamp = path.join(root, '.ferry-deb.json');
  const had = JSON.parse(await fsp.readFile(stamp, 'utf8').catch(() => '{}')) as Partial<PackageInfo>;
  if (had.sha256 === sum) return { deb, sha256: sum };
  await fsp.rm(root, { recursive: true, force: true });
  await fsp.mkdir(root, { recursive: true });
  const unpacked = run('dpkg-deb', ['-x', deb, root], { timeoutMs: 120_000, ...(signal ? { signal } : {}) });
  await unpacked.catch((err: unknown) => {
    throw new FerryError('E_PACKAGE', `Cannot unpack ${deb}: ${messageOf(err)}; rebuild it with 'npm run package'`, {
      cause: err,
    });
  });
  if (!fs.existsSync(path.join(root, 'usr', 'bin', 'ferry')) || !fs.existsSync(path.join(root, UNIT)))
    throw new FerryError(
      'E_PACKAGE',
      `Cannot build a lab from ${deb}: it has no /usr/bin/ferry or ${UNIT}; is it Ferry's package?`,
      {},
    );
  await fsp.writeFile(stamp, JSON.stringify({ deb, sha256: sum }) + '\n');
  return { deb, sha256: sum };
}

/** The agent's command and nice level exactly as the package's unit starts it. */
export async function unitCommand(dir: string): Promise<{ argv: string[]; nice: number }> {
  const text = await fsp.readFile(path.join(packageRoot(dir), UNIT), 'utf8');
  const exec = /^ExecStart=(.+)$/m.exec(text)?.[1]?.trim();
  const nice = Number(/^Nice=(-?\d+)$/m.exec(text)?.[1] ?? 0);
  if (!exec) throw new FerryError('E_PACKAGE', `Cannot start a packaged agent: ${UNIT} has no ExecStart=`, {});
  // The unit's ExecStart is plain words (no quoting, no variables): keep it that way.
  if (/["'$\\]/.test(exec))
    throw new FerryError('E_PACKAGE', `Cannot start a packaged agent: ExecStart= '${exec}' needs a shell`, {});
  return { argv: exec.split(/\s+/), nice };
}

// Runs in the host's network namespace: makes its mount and UTS namespace, then execs the
// command (so the pid the lab records is the command's own).
const ENTER = [
  'set -e',
  'R=$1; P=$2; N=$3; shift 3',
  'mount -t overlay ferry-usr -o "lowerdir=$P/usr:/usr" /usr',
  'mount -t overlay ferry-etc -o "lowerdir=/etc,upperdir=$R/etc,workdir=$R/work/etc" /etc',
  'mount -t overlay ferry-var -o "lowerdir=/var,upperdir=$R/var,workdir=$R/work/var" /var',
  'hostname "$N"',
  'exec "$@"',
].join('\n');

/** `ip` and its arguments that run `argv` inside packaged lab host `name` (namespace `netns`). */
export async function enterHost(dir: string, name: string, netns: string, argv: string[]): Promise<string[]> {
  const root = hostRoot(dir, name);
  for (const p of [root, packageRoot(dir)])
    if (/[,:\s]/.test(p))
      throw new InvalidInputError(`Cannot use '${p}' for a packaged lab: the path may not hold ',', ':' or spaces`);
  for (const d of ['etc', 'var', 'work/etc', 'work/var']) await fsp.mkdir(path.join(root, d), { recursive: true });
  return [
    'netns',
    'exec',
    netns,
    'unshare',
    '--mount',
    '--uts',
    '--propagation',
    'private',
    '--',
    'sh',
    '-c',
    ENTER,
    'ferry-host',
    root,
    packageRoot(dir),
    name,
    ...argv,
  ];
}

async function inHost(dir: string, name: string, netns: string, argv: string[], signal?: AbortSignal): Promise<string> {
  const args = await enterHost(dir, name, netns, argv);
  return new Promise((resolve, reject) => {
    execFile('ip', args, { encoding: 'utf8', timeout: 60_000, signal }, (err, stdout, stderr) => {
      if (err)
        reject(
          new FerryError('E_ENROL', `Cannot run '${argv.join(' ')}' on ${name}: ${stderr.trim() || err.message}`, {
            cause: err,
          }),
        );
      else resolve(stdout);
    });
  });
}

/**
 * Enrols a packaged host with the package's commands: `ferry host init` inside the host (key
 * made there, CA pinned by its fingerprint), `ferry domain sign` by the admin (the package's
 * CLI on this machine), `ferry host install-cert` inside the host. Only the request and the
 * certificate (public) pass through DIR/hosts/NAME.
 */
export async function enrolPackagedHost(
  dir: string,
  h: { name: string; netns: string; address: string; migrationAddress: string; port: number },
  opts: { renew: boolean; signal?: AbortSignal },
): Promise<void> {
  const signal = opts.signal;
  const domainDir = path.join(dir, 'domain');
  const fp = new crypto.X509Certificate(await fsp.readFile(path.join(domainDir, 'ca.crt'))).fingerprint256;
  const csr = path.join(dir, 'hosts', h.name, `${h.name}.csr`);
  const crt = path.join(dir, 'hosts', h.name, `${h.name}.crt`);
  await fsp.rm(path.join(hostRoot(dir, h.name), 'etc', 'ferry'), { recursive: true, force: true });
  await inHost(
    dir,
    h.name,
    h.netns,
    [
      'ferry',
      'host',
      'init',
      h.name,
      '--address',
      h.address,
      '--port',
      String(h.port),
      '--migration-address',
      h.migrationAddress,
      '--san',
      h.migrationAddress,
      '--ca-fingerprint',
      fp,
      '--out',
      csr,
    ],
    signal,
  );
  const pkg = path.join(packageRoot(dir), 'usr', 'lib', 'ferry');
  await run(
    path.join(pkg, 'node'),
    [
      path.join(pkg, 'cli.mjs'),
      'domain',
      'sign',
      csr,
      '--dir',
      domainDir,
      '--lab',
      dir,
      '--out',
      crt,
      ...(opts.renew ? ['--renew'] : []),
    ],
    { timeoutMs: 60_000, ...(signal ? { signal } : {}) },
  ).catch((err: unknown) => {
    throw new FerryError('E_ENROL', `Cannot sign the request of ${h.name}: ${messageOf(err)}`, { cause: err });
  });
  await inHost(dir, h.name, h.netns, ['ferry', 'host', 'install-cert', crt], signal);
}

/** The host's /etc/ferry/agent.json as seen from this machine (its layer). */
export const packagedConfig = (dir: string, name: string): string =>
  path.join(hostRoot(dir, name), 'etc', 'ferry', 'agent.json');

/** Pids of every process in network namespace `netns` (the packaged host's agent, fence, QEMUs, etcd). */
export async function netnsPids(netns: string): Promise<number[]> {
  const out = await run('ip', ['netns', 'pids', netns], { timeoutMs: 10_000 }).then(
    (r) => r.stdout,
    () => '',
  );
  return out
    .split('\n')
    .map((l) => Number(l.trim()))
    .filter((p) => Number.isInteger(p) && p > 0);
}

/** Is `pid` in network namespace `netns`? */
export function inNetns(pid: number, netns: string): boolean {
  try {
    return fs.statSync(`/proc/${pid}/ns/net`).ino === fs.statSync(`/run/netns/${netns}`).ino;
  } catch {
    return false;
  }
}

/** A packaged host's QEMU is named by its run folder inside the host, not by this machine's path. */
export function insideRunDir(vmId: string): string {
  return path.join(INSIDE_DATA, 'run', vmId);
}
