// The local lab: several Ferry hosts on one machine, each with its own data folder and
// agent on loopback, one domain, and DIR/shared as the shared pool `shared` granted to
// every lab host. `up` is idempotent (starts what is not running); `down` stops exactly
// what the lab started, also after a crash (pids are checked against their command line).
// With --netns each host runs in its own network namespace (see netns.ts).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, InvalidInputError, NotFoundError } from '../errors.js';
import { initDomain, loadDomain, type DomainInfo } from '../domain/ca.js';
import { isEnrolled, issueAdminCredential, signHostRequest } from '../domain/signer.js';
import { installCertificate, makeRequest } from '../domain/request.js';
import { AgentClient, type Credentials } from '../api/client.js';
import { actions } from '../api/actions.js';
import { sleep } from '../util/exec.js';
import { isQemuAlive } from '../qemu/process.js';
import { isMemberAlive, loadMembers, startMembers, stopLabMembers } from '../cluster/etcd-members.js';
import { enableAuth, grantHost } from '../cluster/auth.js';
import { processAlive, stopFence } from '../cluster/fence.js';
import { cliCommand, guestCacheDir } from '../../guest/paths.js';
import {
  AGENT_PORT,
  ensureNetns,
  linkStates,
  migrationNetwork,
  netnsHost,
  planNetns,
  removeNetns,
  setLink,
  type LinkKind,
} from './netns.js';
import { freeLoopbackPort } from '../util/free-port.js';
import { labCredentials, labEndpoint, labFile, readLab, type LabFile } from './file.js';
import { labQemuUser, makeLabFolder } from './qemu-user.js';
import {
  enrolPackagedHost,
  enterHost,
  hostRoot,
  inNetns,
  insideRunDir,
  netnsPids,
  packagedConfig,
  packagedDataDir,
  unitCommand,
  unpackPackage,
} from './package-host.js';

export { readLab, labCredentials, labEndpoint } from './file.js';

/** The lab's agents' nice level: the package's unit's Nice= (packaging/ferry-agent.service). */
export const AGENT_NICE = 5;

export interface LabHostStatus {
  name: string;
  endpoint: string;
  dataDir: string;
  agentPid: number | null;
  up: boolean;
  /** --netns only: namespace, migration address, and which links are up (false = cut). */
  netns?: string;
  migrationAddress?: string;
  links?: Record<LinkKind, boolean>;
}
export interface LabStatus {
  dir: string;
  hosts: LabHostStatus[];
  etcd: Array<{ name: string; endpoint: string; pid: number }>;
}

export function hostName(i: number): string {
  return `host-${String.fromCharCode(97 + i)}`;
}

async function writeLab(lab: LabFile): Promise<void> {
  const tmp = labFile(lab.dir) + '.tmp';
  await fsp.writeFile(tmp, JSON.stringify(lab, null, 2) + '\n');
  await fsp.rename(tmp, labFile(lab.dir));
}

function cmdlineOf(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

/**
 * The namespace of a packaged host, found from its data folder (DIR/hosts/NAME/root/var/lib/ferry):
 * its processes name their files by the paths inside the host, so the namespace tells them apart.
 */
function packagedNetns(dataDir: string): string | null {
  const m = /^(.*)\/hosts\/([^/]+)\/root\/var\/lib\/ferry$/.exec(dataDir);
  if (!m) return null;
  try {
    const lab = JSON.parse(fs.readFileSync(labFile(m[1] ?? ''), 'utf8')) as LabFile;
    return lab.hosts.find((h) => h.name === m[2] && h.packaged)?.netns ?? null;
  } catch {
    return null;
  }
}

/** Is `pid` still this host's agent (not a recycled pid)? */
export function isLabAgent(pid: number | null, dataDir: string): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const cmd = cmdlineOf(pid);
  if (!cmd.includes(' agent ')) return false;
  const ns = packagedNetns(dataDir);
  return ns ? inNetns(pid, ns) : cmd.includes(dataDir);
}

/** QEMU processes of one lab host, from the pidfiles under its data folder. */
export async function hostQemuPids(dataDir: string): Promise<number[]> {
  const runRoot = path.join(dataDir, 'run');
  const ns = packagedNetns(dataDir);
  const out: number[] = [];
  for (const d of await fsp.readdir(runRoot).catch(() => [] as string[])) {
    const pid = Number((await fsp.readFile(path.join(runRoot, d, 'qemu.pid'), 'utf8').catch(() => '')).trim());
    if (!(pid > 0 && isQemuAlive(pid))) continue;
    if (ns ? inNetns(pid, ns) && cmdlineOf(pid).includes(insideRunDir(d)) : cmdlineOf(pid).includes(runRoot))
      out.push(pid);
  }
  return out;
}

/** QEMUs started from a checkout host's run folders, found by their command line. */
async function strayQemus(lab: LabFile): Promise<number[]> {
  const roots = lab.hosts.filter((h) => !h.packaged).map((h) => path.join(h.dataDir, 'run') + '/');
  if (!roots.length) return [];
  const pids = (await fsp.readdir('/proc').catch(() => [] as string[])).filter((d) => /^\d+$/.test(d)).map(Number);
  return pids.filter((p) => {
    const argv = cmdlineOf(p);
    return (argv.split(' ')[0] ?? '').includes('qemu-system') && isQemuAlive(p) && roots.some((r) => argv.includes(r));
  });
}

/** A packaged host's fence (it names its data folder as the host sees it). */
async function packagedFences(netns: string): Promise<number[]> {
  return (await netnsPids(netns)).filter((p) => {
    const argv = cmdlineOf(p);
    return argv.includes(' fence ') && !argv.includes('qemu-system');
  });
}

export interface UpOptions {
  dir: string;
  hosts?: number;
  cluster?: boolean;
  netns?: boolean;
  /** A .deb: every host runs it in namespaces of its own (implies netns); see package-host.ts. */
  package?: string;
  signal?: AbortSignal;
  timeoutMs?: number;
  log?: (s: string) => void;
}

export async function labUp(o: UpOptions): Promise<LabStatus> {
  const n = o.hosts ?? 2;
  if (!Number.isInteger(n) || n < 1 || n > 26)
    throw new InvalidInputError(`Cannot start a lab of ${n} hosts: use 1 to 26`, { hosts: n });
  const dir = path.resolve(o.dir);
  await makeLabFolder(dir);
  let lab: LabFile;
  try {
    lab = await readLab(dir);
  } catch {
    lab = { version: 1, dir, hosts: [], cluster: false, netns: null, package: null };
  }
  if (o.package && !lab.package && lab.hosts.length) {
    throw new FerryError(
      'E_LAB_EXISTS',
      `Cannot run the package in the lab in ${dir}: it was created from the checkout; use a new --dir`,
      {},
    );
  }
  if (o.package) {
    lab.package = await unpackPackage(dir, o.package, o.signal);
    o = { ...o, netns: true };
  }
  if (o.netns && !lab.netns && lab.hosts.length) {
    throw new FerryError(
      'E_LAB_EXISTS',
      `Cannot put the lab in ${dir} into network namespaces: it was created without --netns; use a new --dir`,
      {},
    );
  }
  if (o.netns && !lab.netns) lab.netns = await planNetns(dir);
  if (o.cluster && !lab.cluster && lab.hosts.length) {
    throw new FerryError(
      'E_LAB_EXISTS',
      `Cannot turn the lab in ${dir} into a cluster: it was created without --cluster; use a new --dir`,
      {},
    );
  }
  lab.cluster = lab.cluster || Boolean(o.cluster);
  const domainDir = path.join(dir, 'domain');
  const domain = await loadDomain(domainDir).catch(() => initDomain(domainDir, { name: 'lab' }));
  const creds = labCredentials(dir);
  if (!fs.existsSync(creds.cert)) await issueAdminCredential(domain, 'admin');
  const shared = path.join(dir, 'shared');
  await makeLabFolder(shared);
  for (let i = lab.hosts.length; i < n; i++) {
    const name = hostName(i);
    const dataDir = lab.package ? packagedDataDir(dir, name) : path.join(dir, 'hosts', name, 'data');
    if (lab.netns)
      lab.hosts.push({
        name,
        port: AGENT_PORT,
        dataDir,
        agentPid: null,
        ...netnsHost(lab.netns, i),
        ...(lab.package ? { packaged: true } : {}),
      });
    else {
      const port = await freeLoopbackPort(new Set(lab.hosts.map((h) => h.port)));
      lab.hosts.push({ name, port, dataDir, agentPid: null });
    }
  }
  if (lab.netns) {
    await writeLab(lab); // before the links exist, so `down` finds the lab whatever fails next
    await ensureNetns(lab.netns, lab.hosts.length, o.signal);
  }
  // The shared pool's grants live on the share: every lab host is granted.
  const grantsFile = path.join(shared, '.ferry-pool.json');
  const grants = JSON.parse(await fsp.readFile(grantsFile, 'utf8').catch(() => '{"granted":[]}')) as {
    granted: string[];
  };
  const granted = new Set<string>(grants.granted);
  for (const h of lab.hosts) granted.add(h.name);
  await fsp.writeFile(grantsFile, JSON.stringify({ name: 'shared', granted: [...granted].sort() }, null, 2) + '\n');

  // A cluster lab: one etcd member per host (a 3-host lab survives the loss of one).
  const members = lab.cluster
    ? await startMembers({
        labDir: dir,
        hosts: lab.hosts.map((h) => h.name),
        domainDir,
        ...(o.signal ? { signal: o.signal } : {}),
        ...(o.log ? { log: o.log } : {}),
        clientTls: creds,
        reservedPorts: lab.netns ? [] : lab.hosts.map((h) => h.port),
        // In a --netns lab each member runs in its host's namespace, on its address: a host cut
        // from the network is cut from etcd too.
        ...(lab.netns
          ? {
              placement: Object.fromEntries(
                lab.hosts.flatMap((h) =>
                  h.netns && h.address ? [[h.name, { address: h.address, netns: h.netns }]] : [],
                ),
              ),
            }
          : {}),
      })
    : [];
  if (lab.cluster) {
    // etcd's access control: each host writes only its own keys; every lab host may lead.
    const endpoints = members.map((m) => m.clientUrl);
    await enableAuth(endpoints, creds);
    for (const h of lab.hosts) await grantHost(endpoints, creds, { cluster: 'lab', host: h.name });
  }
  // QEMU as ferry-qemu on every host, as on an installed host; the folders on the way to each
  // host's folder and to the shared pool let it pass.
  const hostDirs = lab.hosts.map((h) => path.join(dir, 'hosts', h.name));
  for (const d of hostDirs) await makeLabFolder(d);
  const qemu = await labQemuUser([...hostDirs, shared], o.signal ? { signal: o.signal } : {});
  o.log?.(
    qemu.user
      ? `QEMU runs as '${qemu.user}' with its seccomp sandbox on`
      : `QEMU runs as root (with its seccomp sandbox on): ${qemu.reason}`,
  );
  for (const h of lab.hosts) {
    const settings = {
      pools: [{ name: 'shared', kind: 'shared', path: shared }],
      switches: [{ name: 'lab', kind: 'user', bridge: null }],
      // Each agent talks to its own host's etcd member (as a stacked control plane does), so
      // a host cut from etcd is cut, and fences itself.
      ...(lab.cluster
        ? {
            cluster: {
              name: 'lab',
              endpoints: (members.some((m) => m.name === h.name)
                ? members.filter((m) => m.name === h.name)
                : members
              ).map((m) => m.clientUrl),
            },
          }
        : {}),
    };
    if (h.packaged) {
      if (isLabAgent(h.agentPid, h.dataDir)) continue;
      // `ferry host init` made ferry-qemu the host's default; the lab's finding decides.
      await startPackagedAgent(dir, h, { ...settings, qemu: { user: qemu.user ?? 'root' } }, o);
      continue;
    }
    const tls = path.join(h.dataDir, 'tls');
    if (!fs.existsSync(path.join(tls, 'host.crt'))) await enrolHost(domain, tls, h, o.signal);
    const own = { ...settings, ...(qemu.user ? { qemu: { user: qemu.user } } : {}) };
    await fsp.writeFile(path.join(h.dataDir, 'agent.json'), JSON.stringify(own, null, 2) + '\n');
    if (isLabAgent(h.agentPid, h.dataDir)) continue;
    const logFile = path.join(dir, 'hosts', h.name, 'agent.log');
    const fd = fs.openSync(logFile, 'a');
    const [node, ...cli] = cliCommand();
    const agentArgs = [
      ...cli,
      'agent',
      '--name',
      h.name,
      '--data',
      h.dataDir,
      '--listen',
      `${h.address ?? '127.0.0.1'}:${h.port}`,
      ...(h.migrationAddress ? ['--migration-address', h.migrationAddress] : []),
    ];
    // The agent yields to the guests as the package's unit makes it (Nice=): `nice` sets the
    // level before node starts, so every thread of it has it (setpriority after the spawn
    // would miss the threads node made already); QEMU is put back to 0 (qemu/scope.ts).
    // `ip netns exec` and `nice` exec the agent in place: the pid we get is the agent's.
    const niced = ['-n', String(AGENT_NICE), '--', node, ...agentArgs];
    const child = h.netns
      ? spawn('ip', ['netns', 'exec', h.netns, 'nice', ...niced], {
          detached: true,
          stdio: ['ignore', fd, fd],
          env: { ...process.env },
        })
      : spawn('nice', niced, { detached: true, stdio: ['ignore', fd, fd], env: { ...process.env } });
    fs.closeSync(fd);
    child.unref();
    h.agentPid = child.pid ?? null;
    o.log?.(`started agent ${h.name} (pid ${h.agentPid}) on ${labEndpoint(h)}`);
  }
  await writeLab(lab);
  await waitAgents(lab, creds, o.timeoutMs ?? 90_000, o.signal);
  if (lab.netns) {
    // Migration streams and NBD exports go over the private network only.
    for (const h of lab.hosts) {
      const client = new AgentClient({ endpoint: labEndpoint(h), host: h.name, credentials: creds });
      try {
        await client.call(
          actions.hostSet,
          { body: { migrationNetworks: [migrationNetwork(lab.netns)] } },
          { timeoutMs: 10_000, ...(o.signal ? { signal: o.signal } : {}) },
        );
      } finally {
        client.close();
      }
    }
  }
  return labStatus(dir);
}

/**
 * A packaged host: enrolled with the package's commands unless it holds a certificate, the
 * lab's settings written into its /etc/ferry/agent.json (as an admin would edit it), and the
 * agent started inside the host with the unit's ExecStart and Nice=.
 */
async function startPackagedAgent(
  dir: string,
  h: LabFile['hosts'][number],
  settings: Record<string, unknown>,
  o: UpOptions,
): Promise<void> {
  if (!h.netns || !h.address || !h.migrationAddress)
    throw new FerryError('E_LAB_STATE', `Cannot start packaged host ${h.name}: lab.json has no namespace for it`, {});
  const host = { name: h.name, netns: h.netns, address: h.address, migrationAddress: h.migrationAddress, port: h.port };
  if (!fs.existsSync(path.join(hostRoot(dir, h.name), 'etc', 'ferry', 'tls', 'host.crt')))
    await enrolPackagedHost(dir, host, {
      renew: await isEnrolled(await loadDomain(path.join(dir, 'domain')), h.name),
      ...(o.signal ? { signal: o.signal } : {}),
    });
  const cfgFile = packagedConfig(dir, h.name);
  const cfg = JSON.parse(await fsp.readFile(cfgFile, 'utf8')) as Record<string, unknown>;
  await fsp.writeFile(cfgFile, JSON.stringify({ ...cfg, ...settings }, null, 2) + '\n', { mode: 0o640 });
  const unit = await unitCommand(dir);
  const logFile = path.join(dir, 'hosts', h.name, 'agent.log');
  const fd = fs.openSync(logFile, 'a');
  const args = await enterHost(dir, h.name, h.netns, ['nice', '-n', String(unit.nice), '--', ...unit.argv]);
  // A clean environment, as systemd gives a unit; the one addition is the test rig's: where
  // this checkout built the project's test guests (`vm new --guest probe`).
  const child = spawn('ip', args, {
    detached: true,
    stdio: ['ignore', fd, fd],
    env: {
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      LANG: 'C.UTF-8',
      FERRY_GUEST_CACHE: guestCacheDir(),
    },
  });
  fs.closeSync(fd);
  child.unref();
  h.agentPid = child.pid ?? null;
  o.log?.(`started packaged agent ${h.name} (pid ${h.agentPid}) on ${labEndpoint(h)}`);
}

/**
 * Enrols a lab host the way a real host is enrolled: its key and request are made in its
 * own TLS folder, the lab's CA signs the request, and the host installs the certificate.
 */
async function enrolHost(
  domain: DomainInfo,
  tlsDir: string,
  h: { name: string; port: number; address?: string | undefined; migrationAddress?: string | undefined },
  signal?: AbortSignal,
): Promise<void> {
  // A key without a certificate is what an interrupted `up` left: start that host again.
  for (const f of ['host.key', 'host.csr', 'enrol.json']) await fsp.rm(path.join(tlsDir, f), { force: true });
  const address = h.address ?? '127.0.0.1';
  const req = await makeRequest({
    dir: tlsDir,
    name: h.name,
    address,
    port: h.port,
    extraIps: [...new Set([h.migrationAddress ?? address, '127.0.0.1'])].filter((a) => a !== address),
    ...(signal ? { signal } : {}),
  });
  const signed = await signHostRequest(domain, req.csr, {
    renew: await isEnrolled(domain, h.name),
    ...(signal ? { signal } : {}),
  });
  await installCertificate(tlsDir, signed.bundle);
}

async function waitAgents(lab: LabFile, creds: Credentials, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (const h of lab.hosts) {
    const client = new AgentClient({ endpoint: labEndpoint(h), host: h.name, credentials: creds });
    try {
      for (;;) {
        try {
          await client.call(actions.hostShow, {}, { timeoutMs: 5000, signal });
          // In a cluster lab, up means joined: the node holds its lease.
          if (lab.cluster) {
            const c = await client.call(actions.clusterStatus, {}, { timeoutMs: 5000, signal });
            if ((c.nodes.find((n) => n.name === h.name)?.state ?? 'down') === 'down')
              throw new FerryError('E_CLUSTER_JOINING', `${h.name} has not joined the cluster yet`);
          }
          break;
        } catch (err) {
          // Gone, not "not yet ours": a just-spawned agent is `ip netns exec` until that enters the
          // namespace and execs nice and node, and a loaded machine may take a while to get there.
          if (!processAlive(h.agentPid ?? 0)) {
            const log = await fsp.readFile(path.join(lab.dir, 'hosts', h.name, 'agent.log'), 'utf8').catch(() => '');
            throw new FerryError(
              'E_AGENT_START',
              `Cannot start the agent of ${h.name}: it exited; its log ends with: ` +
                log.trim().split('\n').slice(-3).join(' / '),
              { cause: err },
            );
          }
          if (Date.now() > until)
            throw new FerryError(
              'E_TIMEOUT',
              `Cannot start the lab: the agent of ${h.name} did not answer within ${timeoutMs} ms; ` +
                `see ${lab.dir}/hosts/${h.name}/agent.log`,
              { cause: err },
            );
          await sleep(200, signal);
        }
      }
    } finally {
      client.close();
    }
  }
}

export async function labStatus(dirIn: string, opts: { probe?: boolean } = {}): Promise<LabStatus> {
  const dir = path.resolve(dirIn);
  const lab = await readLab(dir);
  const creds = labCredentials(dir);
  const hosts = await Promise.all(
    lab.hosts.map(async (h) => {
      let up = isLabAgent(h.agentPid, h.dataDir);
      if (up && opts.probe !== false) {
        const client = new AgentClient({ endpoint: labEndpoint(h), host: h.name, credentials: creds });
        up = await client.call(actions.hostShow, {}, { timeoutMs: 5000 }).then(
          () => true,
          () => false,
        );
        client.close();
      }
      const index = lab.hosts.indexOf(h);
      return {
        name: h.name,
        endpoint: labEndpoint(h),
        dataDir: h.dataDir,
        agentPid: h.agentPid,
        up,
        ...(lab.netns && h.netns
          ? {
              netns: h.netns,
              ...(h.migrationAddress !== undefined ? { migrationAddress: h.migrationAddress } : {}),
              links: await linkStates(lab.netns, index),
            }
          : {}),
      };
    }),
  );
  const etcd = lab.cluster
    ? (await loadMembers(dir).catch(() => []))
        .filter((m) => isMemberAlive(m.pid, m.dataDir))
        .map((m) => ({ name: m.name, endpoint: m.clientUrl, pid: m.pid }))
    : [];
  return { dir, hosts, etcd };
}

async function waitGone(pids: number[], ms: number): Promise<number[]> {
  const until = Date.now() + ms;
  let alive = pids;
  while (alive.length && Date.now() < until) {
    await sleep(100);
    alive = alive.filter((p) => {
      try {
        process.kill(p, 0);
        return !fs.readFileSync(`/proc/${p}/stat`, 'utf8').includes(') Z ');
      } catch {
        return false;
      }
    });
  }
  return alive;
}

/** Power loss of one host: SIGKILL its agent and its QEMUs at once. */
export async function labKill(dirIn: string, host: string): Promise<{ killed: number[] }> {
  const lab = await readLab(path.resolve(dirIn));
  const h = lab.hosts.find((x) => x.name === host);
  if (!h)
    throw new NotFoundError(
      'E_HOST_NOT_FOUND',
      `Cannot kill host '${host}': the lab has ${lab.hosts.map((x) => x.name).join(', ')}`,
      { host },
    );
  const member = lab.cluster
    ? (await loadMembers(lab.dir).catch(() => [])).find((m) => m.name === host && isMemberAlive(m.pid, m.dataDir))
    : undefined;
  // The host's fence process dies with it.
  const fences = h.packaged && h.netns ? await packagedFences(h.netns) : [];
  for (const p of fences) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  if (!h.packaged) await stopFence(h.dataDir, 'SIGKILL');
  const pids = [
    ...(h.agentPid !== null && isLabAgent(h.agentPid, h.dataDir) ? [h.agentPid] : []),
    ...(await hostQemuPids(h.dataDir)),
    ...(member ? [member.pid] : []),
  ];
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await waitGone(pids, 5000);
  return { killed: pids };
}

/** Stops every agent and QEMU the lab started; the lab's files stay for the next `up`. */
export async function labDown(dirIn: string): Promise<{ stopped: number[] }> {
  const dir = path.resolve(dirIn);
  let lab: LabFile;
  try {
    lab = await readLab(dir);
  } catch (err) {
    await removeNetns(dir).catch(() => undefined); // leftovers of a lab whose lab.json is gone
    throw err;
  }
  // The fence processes first: with the agents gone they would kill the HA VMs before QEMU's clean exit.
  for (const h of lab.hosts) {
    if (!h.packaged || !h.netns) {
      await stopFence(h.dataDir);
      continue;
    }
    const fences = await packagedFences(h.netns);
    for (const p of fences) {
      try {
        process.kill(p, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
    await waitGone(fences, 5000);
  }
  const agents = lab.hosts.flatMap((h) =>
    h.agentPid !== null && isLabAgent(h.agentPid, h.dataDir) ? [h.agentPid] : [],
  );
  for (const p of agents) {
    try {
      process.kill(p, 'SIGTERM');
    } catch {
      /* gone */
    }
  }
  let left = await waitGone(agents, 10_000);
  for (const p of left) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  const tracked = (await Promise.all(lab.hosts.map((h) => hostQemuPids(h.dataDir)))).flat();
  // Also a QEMU whose pid file no longer names it (a second one of the VM's run folder wrote over
  // it): whatever runs from this lab's folders stops with it.
  const qemus = [...new Set([...tracked, ...(await strayQemus(lab))])];
  for (const p of qemus) {
    try {
      process.kill(p, 'SIGTERM');
    } catch {
      /* gone */
    }
  } // QEMU flushes and exits on SIGTERM
  left = await waitGone(qemus, 10_000);
  for (const p of left) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await waitGone(left, 5000);
  if (lab.cluster) await stopLabMembers(dir);
  // Namespaces, veths and bridges go too (by name prefix, so also a crashed run's leftovers).
  await removeNetns(dir).catch(() => undefined);
  for (const h of lab.hosts) h.agentPid = null;
  await writeLab(lab);
  return { stopped: [...agents, ...qemus] };
}

/** Cuts (`up` false) or restores one link of one host of a --netns lab. */
export async function labLink(
  dirIn: string,
  host: string,
  link: LinkKind,
  up: boolean,
): Promise<Record<LinkKind, boolean>> {
  const lab = await readLab(path.resolve(dirIn));
  const i = lab.hosts.findIndex((x) => x.name === host);
  if (i < 0)
    throw new NotFoundError(
      'E_HOST_NOT_FOUND',
      `Cannot ${up ? 'restore' : 'cut'} a link of host '${host}': ` +
        `the lab has ${lab.hosts.map((x) => x.name).join(', ')}`,
      { host },
    );
  if (!lab.netns)
    throw new FerryError(
      'E_UNSUPPORTED',
      `Cannot ${up ? 'restore' : 'cut'} a link of '${host}': the lab in ${lab.dir} has no network namespaces; ` +
        `create one with 'ferry lab up --netns'`,
      {},
    );
  await setLink(lab.netns, i, link, up);
  return linkStates(lab.netns, i);
}
