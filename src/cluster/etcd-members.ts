// One etcd member per lab host: Debian's etcd-server (3.4), loopback ports, mutual TLS
// for client and peer traffic with host certificates of the lab's domain, data in
// DIR/hosts/<name>/etcd, log in DIR/hosts/<name>/etcd.log, detached so the members
// outlive the process that started them (like the lab's agents). DIR/etcd.json records
// ports, the cluster token and pids; pids are checked against /proc/<pid>/cmdline, so a
// stale pid is never signalled. A member whose data folder already holds a member
// restarts with its data (`--initial-cluster-state existing`).
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as z from 'zod';
import { Etcd3 } from 'etcd3';
import { FerryError, InvalidInputError, messageOf } from '../errors.js';
import { issueCert, loadDomain } from '../domain/ca.js';
import { NAME_RE } from '../api/common.js';
import { deadline, sleep } from '../util/exec.js';
import { tlsServerName } from '../util/tls-name.js';
import { AbortedError } from '../errors.js';
import { freeLoopbackPort } from '../util/free-port.js';

export const ETCD_BIN = '/usr/bin/etcd';

export interface MemberTls {
  ca: string;
  cert: string;
  key: string;
}

export interface EtcdMember {
  name: string;
  /** https://127.0.0.1:PORT, for clients. */
  clientUrl: string;
  /** https://127.0.0.1:PORT, for the other members. */
  peerUrl: string;
  pid: number;
  /** etcd's --data-dir: DIR/hosts/<name>/etcd (TLS files in its tls/ folder). */
  dataDir: string;
  logFile: string;
  /** This host's certificate: etcd serves it, and a client on this host may use it. */
  tls: MemberTls;
}

const MemberRecord = z.object({
  name: z.string(),
  clientPort: z.number().int(),
  peerPort: z.number().int(),
  pid: z.number().int().nullable(),
  dataDir: z.string(),
  logFile: z.string(),
  tls: z.object({ ca: z.string(), cert: z.string(), key: z.string() }),
  // A member inside a lab host's network namespace listens on that host's address (2379/2380).
  address: z.string().optional(),
  netns: z.string().optional(),
});
type MemberRecord = z.infer<typeof MemberRecord>;
const EtcdFile = z.object({ version: z.literal(1), token: z.string(), members: z.array(MemberRecord) });
type EtcdFile = z.infer<typeof EtcdFile>;

export const etcdFile = (labDir: string): string => path.join(labDir, 'etcd.json');

const url = (port: number, address = '127.0.0.1'): string => `https://${address}:${port}`;

function toMember(r: MemberRecord): EtcdMember {
  return {
    name: r.name,
    clientUrl: url(r.clientPort, r.address),
    peerUrl: url(r.peerPort, r.address),
    pid: r.pid ?? 0,
    dataDir: r.dataDir,
    logFile: r.logFile,
    tls: r.tls,
  };
}

async function readEtcdFile(labDir: string): Promise<EtcdFile | null> {
  let text: string;
  try {
    text = await fsp.readFile(etcdFile(labDir), 'utf8');
  } catch {
    return null;
  }
  try {
    return EtcdFile.parse(JSON.parse(text));
  } catch (err) {
    throw new FerryError(
      'E_ETCD_STATE',
      `Cannot read ${etcdFile(labDir)}: it is not a valid etcd member file (${messageOf(err)}); ` +
        "stop the members and remove the file and the hosts' etcd folders to start a new cluster",
      { cause: err, context: { labDir } },
    );
  }
}

async function writeEtcdFile(labDir: string, f: EtcdFile): Promise<void> {
  const tmp = etcdFile(labDir) + '.tmp';
  await fsp.writeFile(tmp, JSON.stringify(f, null, 2) + '\n');
  await fsp.rename(tmp, etcdFile(labDir));
}

/** The members recorded for a lab (alive or not); [] when the lab has no cluster. */
export async function loadMembers(labDir: string): Promise<EtcdMember[]> {
  return ((await readEtcdFile(path.resolve(labDir)))?.members ?? []).map(toMember);
}

function argvOf(pid: number): string[] {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
}

function isZombie(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** Is `pid` still the etcd member whose data folder is `dataDir` (not a recycled pid, not a zombie)? */
export function isMemberAlive(pid: number | null | undefined, dataDir: string): boolean {
  if (!pid || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const argv = argvOf(pid);
  // In a --netns lab the pid is `ip netns exec NS etcd …` until ip execs etcd in place: under
  // load that moment can outlast the first health check, which took it for a member that exited.
  const bin =
    argv[0] && path.basename(argv[0]) === 'ip' && argv[1] === 'netns' && argv[2] === 'exec' ? argv[4] : argv[0];
  if (!bin || path.basename(bin) !== 'etcd') return false;
  if (!argv.includes(`--data-dir=${dataDir}`)) return false;
  return !isZombie(pid);
}

async function waitGone(pid: number, dataDir: string, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (isMemberAlive(pid, dataDir)) {
    if (Date.now() > until) return false;
    await sleep(50);
  }
  return true;
}

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}

async function logTail(file: string, lines = 3): Promise<string> {
  const text = await fsp.readFile(file, 'utf8').catch(() => '');
  return text.trim().split('\n').slice(-lines).join(' / ');
}

/** Issues this host's etcd certificate into DIR/hosts/<name>/etcd/tls unless it is there. */
async function ensureTls(
  labDir: string,
  domainDir: string,
  name: string,
  address: string | undefined,
  signal?: AbortSignal,
): Promise<MemberTls> {
  const dir = path.join(labDir, 'hosts', name, 'etcd', 'tls');
  const tls = { ca: path.join(dir, 'ca.crt'), cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
  if ((await exists(tls.cert)) && (await exists(tls.key)) && (await exists(tls.ca))) return tls;
  const domain = await loadDomain(domainDir);
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const c = await issueCert(domain, 'host', name, { outDir: dir, signal, ...(address ? { ips: [address] } : {}) });
  await fsp.copyFile(c.ca, tls.ca);
  return tls;
}

/** Where a member's CRL lives: ca.crl beside its CA certificate (a host's TLS folder). */
export const crlOf = (tls: MemberTls): string => path.join(path.dirname(tls.ca), 'ca.crl');

export interface StartMembersOptions {
  labDir: string;
  hosts: string[];
  /** The lab's domain (CA) folder, usually DIR/domain. */
  domainDir: string;
  signal?: AbortSignal;
  /** How long to wait for a healthy cluster (default 30 s). */
  timeoutMs?: number;
  log?: (line: string) => void;
  /**
   * The credential the health check uses (default: each member's own host certificate). Once
   * etcd's access control is on (auth.ts) a host may not touch the health key: pass the admin's.
   */
  clientTls?: MemberTls;
  /**
   * Hosts whose member runs in their own network namespace (a `--netns` lab), on their
   * management address; the others listen on loopback ports of this namespace.
   */
  placement?: Record<string, { address: string; netns: string }>;
  /** Ports of this namespace already promised to others (the lab's agents): never given to a member. */
  reservedPorts?: number[];
}

/**
 * Starts (or restarts) one etcd member per host and waits until every member answers a
 * linearizable read and a client can write. Idempotent: members already running are
 * left alone. Returns the members in the order of `hosts`.
 */
export async function startMembers(o: StartMembersOptions): Promise<EtcdMember[]> {
  const labDir = path.resolve(o.labDir);
  const timeoutMs = o.timeoutMs ?? 30_000;
  if (o.hosts.length === 0)
    throw new InvalidInputError('Cannot start an etcd cluster of no hosts: name at least one host', { hosts: o.hosts });
  for (const h of o.hosts) {
    if (!NAME_RE.test(h))
      throw new InvalidInputError(
        `Cannot start an etcd member for '${h}': the name must be letters, digits, dot, dash or underscore`,
        { host: h },
      );
  }
  if (new Set(o.hosts).size !== o.hosts.length)
    throw new InvalidInputError(`Cannot start etcd members for ${o.hosts.join(', ')}: a host is named twice`, {
      hosts: o.hosts,
    });
  if (!(await exists(ETCD_BIN)))
    throw new FerryError(
      'E_ETCD_MISSING',
      `Cannot start etcd members: ${ETCD_BIN} is not installed; run scripts/setup (Debian package etcd-server)`,
      {},
    );
  await fsp.mkdir(labDir, { recursive: true });

  const hosts = [...o.hosts];
  const prev = await readEtcdFile(labDir);
  const file: EtcdFile = prev ?? { version: 1, token: `ferry-${crypto.randomUUID()}`, members: [] };
  const hasData = async (r: { dataDir: string }): Promise<boolean> => exists(path.join(r.dataDir, 'member'));
  const existing: string[] = [];
  for (const m of file.members) if (await hasData(m)) existing.push(m.name);
  if (!existing.length) {
    // A new cluster: its static initial cluster is exactly these hosts (recorded ports are kept).
    file.members = file.members.filter((m) => hosts.includes(m.name));
  }
  const recorded = new Set(file.members.map((m) => m.name));
  const added = hosts.filter((h) => !recorded.has(h));
  if (existing.length && added.length) {
    throw new FerryError(
      'E_ETCD_MEMBERSHIP',
      `Cannot add etcd members ${added.join(', ')}: the cluster of ${file.members.map((m) => m.name).join(', ')} ` +
        'already holds data and growing it is not supported; start the cluster with its hosts, ' +
        `or stop it and remove ${etcdFile(labDir)} and the hosts' etcd folders`,
      { context: { added, existing } },
    );
  }
  // A port probed free and closed again may be handed out twice: exclude every one already promised.
  const used = new Set([...file.members.flatMap((m) => [m.clientPort, m.peerPort]), ...(o.reservedPorts ?? [])]);
  for (const h of added) {
    const dataDir = path.join(labDir, 'hosts', h, 'etcd');
    const place = o.placement?.[h];
    file.members.push({
      name: h,
      // In its own namespace a member has its host's address to itself: etcd's usual ports.
      clientPort: place ? 2379 : await freeLoopbackPort(used),
      peerPort: place ? 2380 : await freeLoopbackPort(used),
      pid: null,
      dataDir,
      logFile: path.join(labDir, 'hosts', h, 'etcd.log'),
      tls: { ca: '', cert: '', key: '' },
      ...(place ? { address: place.address, netns: place.netns } : {}),
    });
  }
  const members = file.members.filter((m) => hosts.includes(m.name));
  members.sort((a, b) => hosts.indexOf(a.name) - hosts.indexOf(b.name));
  // One at a time: issueCert updates the CA's serial file.
  for (const m of members) {
    await fsp.mkdir(m.dataDir, { recursive: true, mode: 0o700 });
    await fsp.chmod(m.dataDir, 0o700); // etcd 3.4 warns about (and 3.5 refuses) a data dir other than 0700
    m.tls = await ensureTls(labDir, o.domainDir, m.name, m.address, o.signal);
  }
  const initialCluster = file.members.map((m) => `${m.name}=${url(m.peerPort, m.address)}`).join(',');
  const env: NodeJS.ProcessEnv = {};
  // ETCD_* would override our flags.
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ETCD_')) env[k] = v;

  for (const m of members) {
    if (isMemberAlive(m.pid, m.dataDir)) continue;
    const state = (await hasData(m)) ? 'existing' : 'new';
    const args = [
      `--name=${m.name}`,
      `--data-dir=${m.dataDir}`,
      `--listen-client-urls=${url(m.clientPort, m.address)}`,
      `--advertise-client-urls=${url(m.clientPort, m.address)}`,
      `--listen-peer-urls=${url(m.peerPort, m.address)}`,
      `--initial-advertise-peer-urls=${url(m.peerPort, m.address)}`,
      `--initial-cluster=${initialCluster}`,
      `--initial-cluster-token=${file.token}`,
      `--initial-cluster-state=${state}`,
      `--cert-file=${m.tls.cert}`,
      `--key-file=${m.tls.key}`,
      `--trusted-ca-file=${m.tls.ca}`,
      '--client-cert-auth',
      `--peer-cert-file=${m.tls.cert}`,
      `--peer-key-file=${m.tls.key}`,
      `--peer-trusted-ca-file=${m.tls.ca}`,
      '--peer-client-cert-auth',
      // The domain's revocation list beside the CA, when there is one (etcd reads it at every handshake).
      ...(fs.existsSync(crlOf(m.tls)) ? [`--client-crl-file=${crlOf(m.tls)}`, `--peer-crl-file=${crlOf(m.tls)}`] : []),
      '--logger=zap',
      '--log-outputs=stderr',
      '--heartbeat-interval=100',
      '--election-timeout=1000',
      '--pre-vote=true',
      '--auto-compaction-mode=revision',
      '--auto-compaction-retention=10000',
    ];
    const fd = fs.openSync(m.logFile, 'a');
    try {
      // `ip netns exec` execs etcd in place: the pid is the member's.
      const child = m.netns
        ? spawn('ip', ['netns', 'exec', m.netns, ETCD_BIN, ...args], { detached: true, stdio: ['ignore', fd, fd], env })
        : spawn(ETCD_BIN, args, { detached: true, stdio: ['ignore', fd, fd], env });
      child.on('error', () => {
        /* reported through the health wait (the member is not alive) */
      });
      child.unref();
      m.pid = child.pid ?? null;
    } finally {
      fs.closeSync(fd);
    }
    o.log?.(`started etcd member ${m.name} (pid ${m.pid}, ${state}) on ${url(m.clientPort, m.address)}`);
  }
  await writeEtcdFile(labDir, file);
  const out = members.map(toMember);
  await waitHealthy(out, { timeoutMs, signal: o.signal, ...(o.clientTls ? { clientTls: o.clientTls } : {}) });
  return out;
}

/** `tls`: whose credentials (the member's own, or the admin's once etcd checks users). */
function clientFor(m: EtcdMember, callMs: number, tls: EtcdMember['tls'] = m.tls): Etcd3 {
  return new Etcd3({
    hosts: [m.clientUrl],
    // grpc-js sends the endpoint's host as the TLS server name, an IP address here (Node warns,
    // DEP0123); the member's certificate also holds its name, so ask for and check that instead.
    ...(tlsServerName(new URL(m.clientUrl).hostname)
      ? {}
      : { grpcOptions: { 'grpc.ssl_target_name_override': m.name } }),
    credentials: {
      rootCertificate: fs.readFileSync(tls.ca),
      certChain: fs.readFileSync(tls.cert),
      privateKey: fs.readFileSync(tls.key),
    },
    dialTimeout: callMs,
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callMs }),
  });
}

/**
 * Waits until every member serves a linearizable read (so it is part of a quorum with
 * a leader) and a write through the cluster succeeds. Throws with the log's tail when a
 * member exits, and with E_TIMEOUT at the deadline.
 */
export async function waitHealthy(
  members: EtcdMember[],
  o: { timeoutMs?: number; signal?: AbortSignal; clientTls?: MemberTls } = {},
): Promise<void> {
  const timeoutMs = o.timeoutMs ?? 30_000;
  const stop = deadline(timeoutMs, o.signal);
  const pending = new Set(members.map((m) => m.name));
  let wrote = false;
  let lastErr: unknown;
  const clients = new Map(members.map((m) => [m.name, clientFor(m, 1000, o.clientTls ?? m.tls)]));
  try {
    while (pending.size || !wrote) {
      for (const m of members) {
        if (!isMemberAlive(m.pid, m.dataDir)) {
          await sleep(100); // let the log be flushed
          throw new FerryError(
            'E_ETCD_START',
            `Cannot start etcd member ${m.name}: it exited; ` +
              `its log (${m.logFile}) ends with: ${await logTail(m.logFile)}`,
            { context: { member: m.name, logFile: m.logFile } },
          );
        }
      }
      for (const m of members) {
        const c = clients.get(m.name);
        if (!c) continue;
        try {
          if (pending.has(m.name)) {
            await c.get('/ferry/health').string();
            pending.delete(m.name);
          }
          if (!wrote && !pending.has(m.name)) {
            await c.put('/ferry/health').value(new Date().toISOString());
            wrote = true;
          }
        } catch (err) {
          lastErr = err;
        }
      }
      if (!pending.size && wrote) break;
      if (stop.aborted) {
        if (o.signal?.aborted) throw new AbortedError('wait for the etcd cluster', o.signal.reason);
        throw new FerryError(
          'E_TIMEOUT',
          `Cannot start the etcd cluster: ${[...pending].join(', ') || 'the cluster'} did not answer within ` +
            `${timeoutMs} ms (${messageOf(lastErr)}); see ${members.map((m) => m.logFile).join(', ')}`,
          { cause: lastErr, context: { timeoutMs, pending: [...pending] } },
        );
      }
      await sleep(100, o.signal);
    }
  } finally {
    for (const c of clients.values()) c.close();
  }
}

/**
 * SIGTERM, then SIGKILL after `graceMs` (default 10 s); only processes that are still
 * these members. One member at a time: a leader stopped together with its followers
 * tries to hand leadership to a member that is going away and waits 7 s for it; in turn,
 * it hands over at once and the whole cluster stops in about 1 s per member.
 */
export async function stopMembers(members: EtcdMember[], opts: { graceMs?: number } = {}): Promise<void> {
  for (const m of members) {
    if (!isMemberAlive(m.pid, m.dataDir)) continue;
    try {
      process.kill(m.pid, 'SIGTERM');
    } catch {
      /* gone */
    }
    if (await waitGone(m.pid, m.dataDir, opts.graceMs ?? 10_000)) continue;
    try {
      process.kill(m.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    await waitGone(m.pid, m.dataDir, 5000);
  }
}

/** Power loss of one member: SIGKILL, then wait until the process is gone. */
export async function killMember(member: EtcdMember): Promise<void> {
  if (!isMemberAlive(member.pid, member.dataDir)) return;
  try {
    process.kill(member.pid, 'SIGKILL');
  } catch {
    /* gone */
  }
  if (!(await waitGone(member.pid, member.dataDir, 5000))) {
    throw new FerryError(
      'E_ETCD_KILL',
      `Cannot kill etcd member ${member.name} (pid ${member.pid}): it is still running 5 s after SIGKILL; ` +
        'check the process state (D state, ptrace)',
      { context: { member: member.name, pid: member.pid } },
    );
  }
}

/** Stops every member recorded for the lab (also after a crash of the process that started them). */
export async function stopLabMembers(labDir: string, opts: { graceMs?: number } = {}): Promise<void> {
  await stopMembers(await loadMembers(labDir), opts);
}
