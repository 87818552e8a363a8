// What an idle cluster host's control plane costs (issue 17, items 0 and 7): in a 3-node cluster
// lab with one running HA probe VM and no request, the CPU of each host's agent, fence and etcd
// member over a quiet spell (/proc/PID/stat), and the gRPC calls per second the etcd members
// handled, by method (their /metrics, read with each member's own certificate). A polling loop,
// or a call made more often than its purpose needs, shows here.
import fs from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { readLab } from '../../src/lab/file.js';
import { loadMembers, type EtcdMember } from '../../src/cluster/etcd-members.js';
import { fenceFiles } from '../../src/cluster/fence.js';
import { fmt, table } from './stats.js';
import { cpuOf } from './proc-cpu.js';

/** utime+stime of PID in ms (NaN once it is gone). */
const procCpuMs = (pid: number): Promise<number> =>
  cpuOf(pid).then(
    (c) => c.own,
    () => NaN,
  );

/** grpc_server_handled_total by method, summed over the members. */
async function grpcCalls(members: EtcdMember[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const m of members) {
    const [ca, cert, key] = await Promise.all([m.tls.ca, m.tls.cert, m.tls.key].map((f) => fs.readFile(f)));
    const text = await new Promise<string>((resolve, reject) => {
      const req = https.get(new URL('/metrics', m.clientUrl), { ca, cert, key, timeout: 5000 }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve(body));
      });
      req.on('timeout', () => req.destroy(new Error('no answer in 5 s')));
      req.on('error', reject);
    });
    for (const line of text.split('\n')) {
      const hit = /^grpc_server_handled_total\{.*grpc_method="([^"]+)".*\} (\S+)$/.exec(line);
      if (hit) out.set(hit[1]!, (out.get(hit[1]!) ?? 0) + Number(hit[2]));
    }
  }
  return out;
}

interface Proc {
  host: string;
  what: 'agent' | 'fence' | 'etcd';
  pid: number;
}

/**
 * Measures an idle cluster lab at `lab` (up, its HA VM running) for `seconds`; returns the report.
 * `leader` and `vmHost` label the rows.
 */
export async function clusterIdleReport(lab: string, seconds: number, leader: string, vmHost: string): Promise<string> {
  const hosts = (await readLab(lab)).hosts;
  const members = await loadMembers(lab);
  const procs: Proc[] = [];
  for (const h of hosts) {
    if (h.agentPid) procs.push({ host: h.name, what: 'agent', pid: h.agentPid });
    const fence = Number((await fs.readFile(fenceFiles(h.dataDir).pid, 'utf8').catch(() => '')).split('\n')[0]);
    if (fence > 0) procs.push({ host: h.name, what: 'fence', pid: fence });
    const m = members.find((x) => x.name === h.name);
    if (m?.pid) procs.push({ host: h.name, what: 'etcd', pid: m.pid });
  }
  const c0 = await Promise.all(procs.map((p) => procCpuMs(p.pid)));
  const g0 = await grpcCalls(members);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const c1 = await Promise.all(procs.map((p) => procCpuMs(p.pid)));
  const g1 = await grpcCalls(members);
  const span = (performance.now() - t0) / 1000;
  const rate = (host: string, what: Proc['what']): number | null => {
    const i = procs.findIndex((p) => p.host === host && p.what === what);
    return i < 0 ? null : ((c1[i] ?? NaN) - (c0[i] ?? NaN)) / span;
  };
  const rows = hosts.map((h) => {
    const a = rate(h.name, 'agent');
    const f = rate(h.name, 'fence');
    const e = rate(h.name, 'etcd');
    const role = [h.name === leader ? 'leader' : '', h.name === vmHost ? 'HA VM' : ''].filter(Boolean).join(', ');
    return [h.name, role || '-', fmt(a, 1), fmt(f, 1), fmt(e, 1), fmt((a ?? 0) + (f ?? 0) + (e ?? 0), 1)];
  });
  const calls = [...g1].map(([method, n]) => [method, fmt((n - (g0.get(method) ?? 0)) / span, 2)]);
  return (
    `\nidle 3-node cluster (one HA probe VM running, no request, TLS), CPU ms per s over ${span.toFixed(0)} s\n` +
    table(['host', 'role', 'agent', 'fence', 'etcd', 'host total'], rows) +
    `\netcd gRPC calls handled per s (all members; a keepalive is one call)\n` +
    table(
      ['method', 'per s'],
      calls.filter(([, r]) => r !== '0.00'),
    ) +
    '\n'
  );
}

export const clusterLabDir = (dir: string): string => path.join(dir, 'cluster-lab');
