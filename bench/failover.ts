// Fail-over benchmark (issue #17 item 7), on a 3-node cluster lab (real etcd, agents, QEMU):
//  1. rounds: the lab's kill (`ferry lab kill`, called in-process) of the node running an HA
//     probe VM (agent, QEMUs and etcd member at once), then: its QEMU running on another node,
//     and the guest's first heartbeat there.
//     Per round, from the agents' and etcd's logs: whether the dead node's etcd member led Raft
//     (a new Raft leader extends every lease by its election timeout), when the leader's decision
//     and the target's ha-start were done, whether the dead node was seen down by its stopped
//     beat (cluster.node-stale) before its lease expired, and lease or beat losses of the
//     *surviving* nodes (a survivor that cannot renew or write its beat during the Raft election
//     fences its own HA VMs: a false fence), and survivors the leader counted stale (a false
//     fail-over).
//  2. false fail-overs: the same cluster with two HA probe guests under TCG and two busy loops
//     on the 2 cores for --load-minutes, no host killed: every lease or beat loss, stale node,
//     fence, HA restart and leader change counted (all must be zero).
//
//   npx tsx bench/failover.ts [--runs N] [--load-minutes M] [--only rounds,load] [--raft-leader] [--keep]
//
// --raft-leader: before each kill, etcd's Raft leadership is moved to the host running the VM
// (MoveLeader, as the administrator), so every round is the slow case (a Raft election, every
// lease extended) and the one where survivors may fail to renew or beat.
//
// Everything it starts is stopped on every exit path; the temp folder is removed unless --keep.
import fs from 'node:fs';
import { Etcd3 } from 'etcd3';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { spawn, type ChildProcess } from 'node:child_process';
import { parseSerial } from '../guest/records.js';
import { BEAT_PERIOD_MS, BEAT_WINDOW_MS } from '../src/cluster/beats.js';
import { hostQemuPids, labKill } from '../src/lab/lab.js';
import { labCredentials } from '../src/lab/file.js';
import { sleep } from '../src/util/exec.js';
import { fmt, median, max, table } from './lib/stats.js';
import { ferry, flag, json, newProbe, opt } from './lib/lab-cli.js';

const RUNS = Number(opt('runs', '5'));
const LOAD_MIN = Number(opt('load-minutes', '3'));
const ONLY = new Set(opt('only', 'rounds,load').split(','));
const KEEP = flag('keep');
const RAFT_LEADER = flag('raft-leader');
const HOSTS = ['host-a', 'host-b', 'host-c'];

const newHaProbe = (lab: string, name: string, host: string): { id: string } =>
  newProbe(lab, name, host, ['--probe-no-writer', '--ha']);

interface LogLine {
  at: number; // ms since the epoch
  host: string;
  what: string;
  fields: Record<string, unknown>;
}

/** The cluster events of every agent's log (agent.log, one JSON line each). */
async function agentEvents(lab: string): Promise<LogLine[]> {
  const out: LogLine[] = [];
  for (const host of HOSTS) {
    const text = await fsp.readFile(path.join(lab, 'hosts', host, 'agent.log'), 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      if (!line.includes('"event"')) continue;
      try {
        const j = JSON.parse(line) as { time: number; event?: { type: string } & Record<string, unknown> };
        if (j.event) out.push({ at: j.time, host, what: j.event.type, fields: j.event });
      } catch {
        /* a torn last line */
      }
    }
  }
  return out.sort((a, b) => a.at - b.at);
}

/** Raft leader elections seen in the etcd members' logs ("became leader"). */
async function raftElections(lab: string): Promise<LogLine[]> {
  const out: LogLine[] = [];
  for (const host of HOSTS) {
    const text = await fsp.readFile(path.join(lab, 'hosts', host, 'etcd.log'), 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      if (!line.includes('became leader')) continue;
      try {
        const j = JSON.parse(line) as { ts: string };
        out.push({ at: Date.parse(j.ts), host, what: 'raft.leader', fields: {} });
      } catch {
        /* a torn last line */
      }
    }
  }
  return out.sort((a, b) => a.at - b.at);
}

/** Moves etcd's Raft leadership to `host`'s member (sent to the current leader, as the administrator). */
async function moveRaftLeader(lab: string, host: string): Promise<void> {
  const st = json(['lab', 'status', '--dir', lab], lab) as { etcd: Array<{ name: string; endpoint: string }> };
  const creds = labCredentials(lab);
  const open = (endpoint: string): Etcd3 =>
    new Etcd3({
      hosts: [endpoint],
      credentials: {
        rootCertificate: fs.readFileSync(creds.ca),
        certChain: fs.readFileSync(creds.cert),
        privateKey: fs.readFileSync(creds.key),
      },
      defaultCallOptions: () => ({ deadline: Date.now() + 5000 }),
    });
  const ids = new Map<string, { endpoint: string; id: string; leader: string }>();
  for (const m of st.etcd) {
    const c = open(m.endpoint);
    try {
      const s = await c.maintenance.status();
      ids.set(m.name, { endpoint: m.endpoint, id: s.header.member_id, leader: s.leader });
    } finally {
      c.close();
    }
  }
  const target = ids.get(host);
  if (!target) throw new Error(`no etcd member for ${host}`);
  if (target.leader === target.id) return;
  const leader = [...ids.values()].find((m) => m.id === target.leader);
  if (!leader) throw new Error('no etcd leader found');
  const c = open(leader.endpoint);
  try {
    await c.maintenance.moveLeader({ targetID: target.id });
  } finally {
    c.close();
  }
  await sleep(2000); // the cluster settles (leases renewed through the new leader)
}

async function rounds(dir: string): Promise<string> {
  const lab = path.join(dir, 'fo');
  ferry(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster'], lab);
  try {
    const vm = newHaProbe(lab, 'ha1', 'host-a');
    const log = (h: string): string => path.join(lab, 'hosts', h, 'data', 'run', vm.id, 'serial.log');
    const rows: string[][] = [];
    const qemuMs: number[] = [];
    const hbMs: number[] = [];
    let falseFences = 0;
    let falseStale = 0;
    let host = 'host-a';
    for (let run = 1; run <= RUNS; run++) {
      for (
        let i = 0;
        i < 300 && !parseSerial(await fsp.readFile(log(host), 'utf8').catch(() => '')).heartbeats.length;
        i++
      )
        await sleep(200);
      await sleep(2000); // the returned node settles (its lease renewed a few times)
      if (RAFT_LEADER) await moveRaftLeader(lab, host);
      const leader = (json(['cluster', 'status'], lab) as { leader: string | null }).leader;
      const sizes = Object.fromEntries(
        await Promise.all(
          HOSTS.map(async (h) => [h, (await fsp.stat(log(h)).catch(() => ({ size: 0 }))).size] as const),
        ),
      );
      const before = new Map(
        await Promise.all(
          HOSTS.map(async (h) => [h, new Set(await hostQemuPids(path.join(lab, 'hosts', h, 'data')))] as const),
        ),
      );
      // In-process, so that the clock starts at the kill, not at a CLI's start-up.
      const wall0 = Date.now();
      const t0 = performance.now();
      await labKill(lab, host);
      const killMs = performance.now() - t0;
      let next = '';
      let qemuAt: number | null = null;
      while (!next && performance.now() - t0 < 90_000) {
        for (const h of HOSTS) {
          if (h === host) continue;
          if (qemuAt === null) {
            const pids = await hostQemuPids(path.join(lab, 'hosts', h, 'data'));
            if (pids.some((p) => !before.get(h)?.has(p))) qemuAt = performance.now() - t0;
          }
          const text = await fsp.readFile(log(h), 'utf8').catch(() => '');
          if (parseSerial(text.slice(sizes[h] ?? 0)).heartbeats.length) next = h;
        }
        if (!next) await sleep(50);
      }
      const ms = performance.now() - t0;
      await sleep(3000); // the survivors' late lease losses, if any, reach their logs
      const ev = (await agentEvents(lab)).filter((e) => e.at >= wall0);
      const raft = (await raftElections(lab)).filter((e) => e.at >= wall0);
      const since = (e: LogLine | undefined): string => fmt(e ? e.at - wall0 : null);
      const lost = ev.filter((e) => e.what === 'cluster.lease-lost' && e.host !== host);
      const fenced = ev.filter((e) => e.what === 'vm.fenced');
      const stale = ev.filter((e) => e.what === 'cluster.node-stale');
      const staleDead = stale.find((e) => e.fields.node === host);
      const staleLive = stale.filter((e) => e.fields.node !== host);
      falseFences += lost.length;
      falseStale += staleLive.length;
      if (next) hbMs.push(ms);
      if (qemuAt !== null) qemuMs.push(qemuAt);
      rows.push([
        String(run),
        `${host} (${fmt(killMs)})`,
        leader === host ? 'yes' : 'no',
        raft.length ? `yes (+${since(raft[0])})` : 'no',
        since(ev.find((e) => e.what === 'cluster.leader')),
        since(staleDead),
        since(ev.find((e) => e.what === 'vm.ha-started')),
        fmt(qemuAt),
        next || 'none',
        fmt(next ? ms : null),
        `${lost.length}/${fenced.length}`,
        String(staleLive.length),
      ]);
      ferry(['lab', 'up', '--dir', lab], lab); // the killed node comes back (and forgets the VM)
      host = next || host;
    }
    return (
      `Fail-over (lab kill → QEMU running elsewhere → first heartbeat there), ${RUNS} rounds; ms after the kill:\n` +
      table(
        [
          'run',
          'killed (kill took)',
          'ferry leader',
          'raft leader (new one at)',
          'new ferry leader',
          'beat stale',
          'ha-started',
          'QEMU running',
          'on',
          'heartbeat',
          'survivor lease/beat losses/fences',
          'survivors counted stale',
        ],
        rows,
      ) +
      `\nQEMU running: median ${fmt(median(qemuMs))} ms, worst ${fmt(max(qemuMs))} ms; ` +
      `first heartbeat: median ${fmt(median(hbMs))} ms, worst ${fmt(max(hbMs))} ms; ` +
      `survivors' lease/beat losses ${falseFences}, survivors counted stale ${falseStale}\n`
    );
  } finally {
    ferry(['lab', 'down', '--dir', lab], lab);
  }
}

/** A busy loop on one core, until killed. */
function busyLoop(): ChildProcess {
  const c = spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' });
  c.on('error', () => undefined);
  return c;
}

async function load(dir: string): Promise<string> {
  const lab = path.join(dir, 'ld');
  ferry(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster'], lab);
  const loops: ChildProcess[] = [];
  try {
    newHaProbe(lab, 'la', 'host-a');
    newHaProbe(lab, 'lb', 'host-b');
    await sleep(5000);
    const wall0 = Date.now();
    loops.push(busyLoop(), busyLoop());
    const until = wall0 + LOAD_MIN * 60_000;
    let statusCalls = 0;
    let statusFailures = 0;
    while (Date.now() < until) {
      // The CLI too competes for the cores, as an operator's would.
      try {
        json(['cluster', 'status'], lab);
      } catch {
        statusFailures++;
      }
      statusCalls++;
      await sleep(5000);
    }
    for (const l of loops) l.kill('SIGKILL');
    const ev = (await agentEvents(lab)).filter((e) => e.at >= wall0);
    const count = (what: string): number => ev.filter((e) => e.what === what).length;
    const raft = (await raftElections(lab)).filter((e) => e.at >= wall0).length;
    const load1 = os.loadavg()[0]!;
    const rows = [
      ['node lease or beat losses (cluster.lease-lost)', String(count('cluster.lease-lost'))],
      ['nodes counted stale by their beat (cluster.node-stale)', String(count('cluster.node-stale'))],
      ['VMs fenced (vm.fenced)', String(count('vm.fenced'))],
      ['HA restarts decided (cluster.ha)', String(count('cluster.ha'))],
      ['HA starts done (vm.ha-started)', String(count('vm.ha-started'))],
      ['ferry leader changes (cluster.leader)', String(count('cluster.leader'))],
      ['Raft leader elections', String(raft)],
      ['`cluster status` calls failed', `${statusFailures}/${statusCalls}`],
    ];
    return (
      `False fail-overs: 3 nodes, 2 HA probe guests under TCG and 2 busy loops on ${os.cpus().length} CPUs ` +
      `for ${LOAD_MIN} min, no host killed (load average at the end ${fmt(load1, 1)}):\n` +
      table(['count', 'n'], rows) +
      '\n'
    );
  } finally {
    for (const l of loops) l.kill('SIGKILL');
    ferry(['lab', 'down', '--dir', lab], lab);
  }
}

const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fbf-'));
let failed = false;
try {
  process.stdout.write(
    `bench/failover on ${os.cpus().length} CPUs (TCG guests), ${new Date().toISOString()}; ` +
      `beat every ${BEAT_PERIOD_MS} ms, window ${BEAT_WINDOW_MS} ms\n\n`,
  );
  if (ONLY.has('rounds')) process.stdout.write((await rounds(dir)) + '\n');
  if (ONLY.has('load')) process.stdout.write((await load(dir)) + '\n');
} catch (err) {
  failed = true;
  process.stderr.write(`bench/failover failed: ${(err as Error).stack}\n`);
} finally {
  if (!KEEP && fs.existsSync(dir)) await fsp.rm(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
