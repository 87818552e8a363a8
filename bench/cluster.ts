// Cluster benchmark (issue #6):
//  1. failover: `ferry lab kill` of the node running an HA probe VM → first heartbeat of the
//     VM on another node, over several runs (3-node cluster lab, real etcd and QEMU);
//  2. drain of N small VMs: wall time of `ferry cluster drain` against the baseline
//     (sum of the same VMs' single moves ÷ the cluster's outgoing limit), same run;
//  3. queue decision latency: 100 simulated nodes × 50 clustered VMs in a real 3-member etcd,
//     a queue of 500 moves: one scheduler pass (read, decide, admit by transactions), and a
//     fail-over placement of a dead node's 50 VMs over the 99 others.
//
//   npx tsx bench/cluster.ts [--runs N] [--vms N] [--only failover,drain,queue] [--keep]
//
// Everything it starts is stopped on every exit path; the temp folder is removed unless --keep.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseSerial } from '../guest/records.js';
import { initDomain } from '../src/domain/ca.js';
import { startMembers, stopLabMembers } from '../src/cluster/etcd-members.js';
import { EtcdStore } from '../src/cluster/store.js';
import { Scheduler } from '../src/cluster/queue.js';
import { place } from '../src/cluster/placement.js';
import { schedule } from '../src/cluster/schedule.js';
import type { QueueItem } from '../src/cluster/model.js';
import * as K from '../src/cluster/keys.js';
import { hostQemuPids } from '../src/lab/lab.js';
import { NODE_TTL_S } from '../src/cluster/membership.js';
import { sleep } from '../src/util/exec.js';
import { fmt, median, max, table } from './lib/stats.js';
import { ferry, flag, json, newProbe, opt } from './lib/lab-cli.js';

const RUNS = Number(opt('runs', '3'));
const NVMS = Number(opt('vms', '10'));
const ONLY = new Set(opt('only', 'failover,drain,queue').split(','));
const KEEP = flag('keep');
const HOSTS = ['host-a', 'host-b', 'host-c'];

async function failover(dir: string): Promise<string> {
  const lab = path.join(dir, 'fo');
  ferry(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster'], lab);
  try {
    const vm = newProbe(lab, 'ha1', 'host-a', ['--probe-no-writer', '--ha']);
    const log = (h: string): string => path.join(lab, 'hosts', h, 'data', 'run', vm.id, 'serial.log');
    const rows: string[][] = [];
    const times: number[] = [];
    let host = 'host-a';
    for (let run = 1; run <= RUNS; run++) {
      for (
        let i = 0;
        i < 150 && !parseSerial(await fsp.readFile(log(host), 'utf8').catch(() => '')).heartbeats.length;
        i++
      )
        await sleep(200);
      const leader = (json(['cluster', 'status'], lab) as { leader: string | null }).leader;
      const sizes = Object.fromEntries(
        await Promise.all(
          HOSTS.map(async (h) => [h, (await fsp.stat(log(h)).catch(() => ({ size: 0 }))).size] as const),
        ),
      );
      const t0 = performance.now();
      ferry(['lab', 'kill', host, '--dir', lab], lab);
      let next = '';
      while (!next && performance.now() - t0 < 90_000) {
        for (const h of HOSTS) {
          if (h === host) continue;
          const text = await fsp.readFile(log(h), 'utf8').catch(() => '');
          if (parseSerial(text.slice(sizes[h] ?? 0)).heartbeats.length) next = h;
        }
        if (!next) await sleep(50);
      }
      const ms = performance.now() - t0;
      if (next) times.push(ms);
      rows.push([String(run), host, leader === host ? 'yes' : 'no', next || 'none', fmt(next ? ms : null)]);
      ferry(['lab', 'up', '--dir', lab], lab); // the killed node comes back (and forgets the VM)
      host = next || host;
      for (let i = 0; i < 100 && (await hostQemuPids(path.join(lab, 'hosts', host, 'data'))).length === 0; i++)
        await sleep(100);
    }
    return (
      `Failover (lab kill → first heartbeat on the new node), ${RUNS} runs:\n` +
      table(['run', 'killed', 'held leadership', 'restarted on', 'ms'], rows) +
      `\nmedian ${fmt(median(times))} ms, max ${fmt(max(times))} ms ` +
      `(node lease TTL ${NODE_TTL_S} s; the VM boots under TCG in ~2.5 s)\n`
    );
  } finally {
    ferry(['lab', 'down', '--dir', lab], lab);
  }
}

async function drain(dir: string): Promise<string> {
  const lab = path.join(dir, 'dr');
  ferry(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster'], lab);
  try {
    const names = Array.from({ length: NVMS }, (_, i) => `d${i + 1}`);
    for (const n of names) newProbe(lab, n, 'host-c', ['--probe-no-writer', '--memory', '96']);
    await sleep(15_000); // let them boot
    const limit = (json(['cluster', 'status'], lab) as { limits: { maxOutgoing: number } }).limits.maxOutgoing;
    // Baseline: each VM moved alone (host-c → host-a and back), one after the other.
    const single: number[] = [];
    const singleWall: number[] = [];
    for (const n of names) {
      const w0 = performance.now();
      const rec = json(['move-vm', n, '--to', 'host-a'], lab) as { totalMs: number | null };
      singleWall.push(performance.now() - w0);
      single.push(rec.totalMs ?? 0);
      ferry(['move-vm', n, '--to', 'host-c'], lab);
    }
    const sum = single.reduce((a, b) => a + b, 0);
    const sumWall = singleWall.reduce((a, b) => a + b, 0);
    const t0 = performance.now();
    const b = json(['cluster', 'drain', 'host-c'], lab) as { state: string; items: Array<{ state: string }> };
    const wall = performance.now() - t0;
    const base = sum / limit;
    return (
      `Drain of ${NVMS} probe VMs (96 MiB, idle) with ${limit} moves out of a node at once:\n` +
      table(
        ['measure', 'ms'],
        [
          ['sum of single moves (record total: copy only)', fmt(sum)],
          [`baseline A: that sum ÷ ${limit}`, fmt(base)],
          ['sum of single moves (move-vm wall: CLI, compare, copy)', fmt(sumWall)],
          [`baseline B: that sum ÷ ${limit}`, fmt(sumWall / limit)],
          ['cluster drain (wall: plan with compares, queue, copies)', fmt(wall)],
        ],
      ) +
      `\nratio drain / baseline A = ${fmt(wall / base, 2)}, / baseline B = ${fmt(wall / (sumWall / limit), 2)}; ` +
      `drain ${b.state}, ${b.items.filter((i) => i.state === 'moved').length}/${NVMS} moved\n`
    );
  } finally {
    ferry(['lab', 'down', '--dir', lab], lab);
  }
}

async function queue(dir: string): Promise<string> {
  const d = path.join(dir, 'etcd');
  await initDomain(path.join(d, 'domain'), { name: 'bench' });
  const members = await startMembers({ labDir: d, hosts: HOSTS, domainDir: path.join(d, 'domain'), timeoutMs: 60_000 });
  const store = await EtcdStore.connect({
    endpoints: members.map((m) => m.clientUrl),
    tls: members[0]!.tls,
    prefix: '/ferry/clusters/bench/',
    dialTimeoutMs: 10_000,
  });
  try {
    const NODES = 100;
    const PER = 50;
    const nodes = Array.from({ length: NODES }, (_, i) => `n${String(i).padStart(3, '0')}`);
    const t0 = performance.now();
    const ops: Array<Promise<void>> = [];
    const put = async (k: string, v: string): Promise<void> => {
      await store.put(k, v);
    };
    for (const n of nodes) {
      ops.push(put(K.members.key(n), K.members.encode({ endpoint: `https://10.0.0.1:7443` })));
      ops.push(
        put(K.nodes.key(n), K.nodes.encode({ endpoint: `https://10.0.0.1:7443`, since: new Date().toISOString() })),
      );
      for (let v = 0; v < PER; v++) {
        const name = `${n}-vm${v}`;
        ops.push(
          put(
            K.vms.key(name),
            K.vms.encode({
              name,
              id: name,
              configPath: `/shared/${name}`,
              owner: n,
              memoryMiB: 1024,
              generation: 0,
              spec: {
                name,
                cluster: {
                  priority: (['high', 'normal', 'low'] as const)[v % 3],
                  preferredOwners: [],
                  antiAffinity: v % 10 === 0 ? ['db'] : [],
                },
              },
            }),
          ),
        );
      }
      if (ops.length > 400) await Promise.all(ops.splice(0));
    }
    await Promise.all(ops.splice(0));
    const fillMs = performance.now() - t0;
    // A queue of 500 moves between random nodes, none admitted yet.
    const items: QueueItem[] = [];
    for (let i = 0; i < 500; i++) {
      const from = nodes[i % NODES]!;
      const to = nodes[(i * 7 + 3) % NODES]!;
      const it: QueueItem = {
        id: `m${String(i).padStart(4, '0')}-0000-0000`,
        vm: `${from}-vm${i % PER}`,
        from,
        to,
        priority: (['high', 'normal', 'low'] as const)[i % 3]!,
        seq: i,
        state: 'queued',
      };
      items.push(it);
      const { state: _s, ...rest } = it;
      ops.push(put(K.queue.key(from, it.id), K.queue.codec.encode(rest)));
    }
    await Promise.all(ops.splice(0));
    const leadership = await store.campaign('leader', 'bench', { ttlSeconds: 10 });
    const sched = new Scheduler(store, leadership, () => undefined);
    const passes: number[] = [];
    // First pass admits what the limits allow; later passes (nothing to admit) are the steady state.
    for (let i = 0; i < 5; i++) {
      await (sched as unknown as { decide(): Promise<void> }).decide();
      passes.push(sched.lastDecisionMs);
    }
    const admitted = Object.keys(await store.getPrefix(K.admits.prefix)).length;
    // Pure decision and placement alone.
    const p0 = performance.now();
    for (let i = 0; i < 100; i++)
      schedule(
        items,
        K.parseLimits(null, () => undefined),
      );
    const pureMs = (performance.now() - p0) / 100;
    const pn = nodes.map((name) => ({ name, up: name !== 'n000', paused: false, freeMiB: 64 * 1024 }));
    const existing = nodes.slice(1).flatMap((n) =>
      Array.from({ length: PER }, (_, v) => ({
        vm: `${n}-vm${v}`,
        node: n,
        antiAffinity: v % 10 === 0 ? ['db'] : [],
      })),
    );
    const dead = Array.from({ length: PER }, (_, v) => ({
      name: `n000-vm${v}`,
      memoryMiB: 1024,
      priority: (['high', 'normal', 'low'] as const)[v % 3]!,
      preferredOwners: [],
      antiAffinity: v % 10 === 0 ? ['db'] : [],
      exclude: ['n000'],
    }));
    const q0 = performance.now();
    for (let i = 0; i < 20; i++) place(pn, existing, dead);
    const placeMs = (performance.now() - q0) / 20;
    await leadership.resign().catch(() => undefined);
    return (
      `Queue decision with ${NODES} nodes × ${PER} clustered VMs (${NODES * PER} records) ` +
      `and 500 queued moves in a 3-member etcd (filled in ${fmt(fillMs)} ms):\n` +
      table(
        ['measure', 'ms'],
        [
          [`scheduler pass, first (read + decide + ${admitted} admissions by txn)`, fmt(passes[0]!, 1)],
          ['scheduler pass, steady (read + decide, nothing to admit), median of 4', fmt(median(passes.slice(1)), 1)],
          ['decision alone (pure, 500 items)', fmt(pureMs, 3)],
          [`fail-over placement of ${PER} VMs over ${NODES - 1} nodes (${existing.length} placed)`, fmt(placeMs, 2)],
        ],
      ) +
      '\n'
    );
  } finally {
    await store.close().catch(() => undefined);
    await stopLabMembers(d, { graceMs: 5000 }).catch(() => undefined);
  }
}

const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fbc-'));
let failed = false;
try {
  process.stdout.write(`bench/cluster on ${os.cpus().length} CPUs (TCG guests), ${new Date().toISOString()}\n\n`);
  if (ONLY.has('queue')) process.stdout.write((await queue(dir)) + '\n');
  if (ONLY.has('failover')) process.stdout.write((await failover(dir)) + '\n');
  if (ONLY.has('drain')) process.stdout.write((await drain(dir)) + '\n');
} catch (err) {
  failed = true;
  process.stderr.write(`bench/cluster failed: ${(err as Error).stack}\n`);
} finally {
  if (!KEEP) await fsp.rm(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
