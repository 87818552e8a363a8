// The failover cluster's operations on a 3-host lab (real etcd, real QEMU): drain through the
// cluster queue, dry-run blockers, abort, fail-back, the leader's agent killed mid-drain, and
// a node isolated from etcd fencing itself. Where a test must act while a drain is running,
// the moves are held at the start of their preparing phase with the agents' test hook
// (FERRY_TEST_HOLD_DIR, src/migration/policy.ts), so the drain cannot finish first.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { assertHeartbeatsContinue, waitSerial } from './lab.js';
import { sleep } from '../../src/util/exec.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { hostQemuPids, type LabStatus } from '../../src/lab/lab.js';
import { qemusOfRunDir } from '../../src/qemu/process.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import type { BatchView, ClusterView, VmView } from '../../src/api/schemas.js';
import { Clients, loadContext } from '../../src/cli/context.js';
import { actions } from '../../src/api/actions.js';
import { readRequestLog, requestLogEnv } from './request-log.js';
import { labTempDir } from '../helpers.js';
import { NODE_TTL_S } from '../../src/cluster/membership.js';

const HOSTS = ['host-a', 'host-b', 'host-c'];
let dir = '';
let lab = '';
let holds = '';

before(async () => {
  dir = await labTempDir('fdr-');
  lab = path.join(dir, 'lab');
  holds = path.join(dir, 'holds');
  await fsp.mkdir(holds);
  // Every agent this file starts (also those `lab up` restarts) gets the hook.
  process.env.FERRY_TEST_HOLD_DIR = holds;
  // The leader waits 8 s (not 60) for a node to boot an HA VM: the last test holds one longer.
  process.env.FERRY_TEST_HA_START_TIMEOUT_MS = '8000';
  await ferryOk(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster']);
});
after(async () => {
  // A stopped etcd member would keep `lab down` waiting: continue it first.
  const st = await ferryOk<LabStatus>(['lab', 'status', '--dir', lab, '--json']).catch(() => null);
  for (const m of st?.etcd ?? []) {
    try {
      process.kill(m.pid, 'SIGCONT');
    } catch {
      /* gone */
    }
  }
  await ferry(['lab', 'down', '--dir', lab]);
  await fsp.rm(dir, { recursive: true, force: true });
});

const status = (): Promise<ClusterView> => ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab });
const vms = (): Promise<VmView[]> => ferryOk<VmView[]>(['vm', 'list', '--json'], { lab });
const shared = (name: string): string => path.join(lab, 'shared', name);
/** Every VM runs; a stopped one is explained by what the hosts' fences and agents logged about fencing. */
async function allRun(): Promise<void> {
  const stopped = (await vms()).filter((v) => v.state !== 'running');
  if (!stopped.length) return;
  const why: string[] = [];
  for (const h of HOSTS) {
    const text = async (f: string): Promise<string[]> => (await fsp.readFile(f, 'utf8').catch(() => '')).split('\n');
    const fence = (await text(path.join(lab, 'hosts', h, 'data', 'fence.log'))).filter((l) => /killing|fenced/.test(l));
    const agent = (await text(path.join(lab, 'hosts', h, 'agent.log'))).filter((l) => /lease-lost|fence/i.test(l));
    why.push(...fence.map((l) => `${h} fence: ${l}`), ...agent.slice(-5).map((l) => `${h} agent: ${l.slice(0, 300)}`));
  }
  assert.fail(`${stopped.map((v) => `${v.name} on ${v.host} is ${v.state}`).join(', ')}; fencing:\n${why.join('\n')}`);
}
const logOf = (host: string, id: string): string => path.join(lab, 'hosts', host, 'data', 'run', id, 'serial.log');
const logs = async (id: string): Promise<string[]> =>
  Promise.all(HOSTS.map((h) => fsp.readFile(logOf(h, id), 'utf8').catch(() => '')));

async function waitBatch(node: string, pred: (b: BatchView) => boolean, timeoutMs = 240_000): Promise<BatchView> {
  const until = Date.now() + timeoutMs;
  let last: BatchView | undefined;
  while (Date.now() < until) {
    last = (await status().catch(() => null))?.batches.find((b) => b.node === node);
    if (last && pred(last)) return last;
    await sleep(300);
  }
  throw new Error(`batch of ${node} did not get there: ${JSON.stringify(last)}`);
}

/** Moves wait at the start of their preparing phase until release() (the hook's limit is 2 min). */
const hold = (): Promise<void> => fsp.writeFile(path.join(holds, 'preparing'), '');
const release = (): Promise<void> => fsp.rm(path.join(holds, 'preparing'), { force: true });

/** Waits until the drain of `node` has one move admitted (held) and at least one waiting behind it. */
async function waitHeldDrain(node: string): Promise<ClusterView> {
  const until = Date.now() + 120_000;
  let s: ClusterView | null = null;
  while (Date.now() < until) {
    s = await status().catch(() => null);
    const mine = s?.queue.filter((q) => q.batch === `drain:${node}`) ?? [];
    if (mine.some((q) => q.state === 'admitted') && mine.some((q) => q.state === 'queued')) return s as ClusterView;
    await sleep(200);
  }
  throw new Error(`the drain of ${node} never had a held move and a queued one: ${JSON.stringify(s?.queue)}`);
}

async function newProbe(name: string, host: string, extra: string[] = []): Promise<VmView> {
  return ferryOk<VmView>(
    ['vm', 'new', name, '--host', host, '--guest', 'probe', '--path', shared(name), '--start', '--json', ...extra],
    { lab },
  );
}

async function waitAcks(id: string, host: string, n: number): Promise<void> {
  const name = (await vms()).find((v) => v.id === id)?.name ?? id;
  await waitSerial(logOf(host, id), { acks: n, lab, vm: name, host });
}

/** Every VM on exactly one host, as every host's inventory says. */
async function placement(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const v of await vms()) {
    assert.equal(out[v.name], undefined, `${v.name} is on one host only`);
    out[v.name] = v.host;
  }
  return out;
}

/** Stops the VM and checks its disk holds every record its guest acknowledged, on any host. */
async function stopVerified(v: VmView): Promise<void> {
  await ferryOk(['vm', 'stop', v.name], { lab });
  const acked = Math.max(...(await logs(v.id)).map((t) => parseSerial(t).highestAck ?? 0));
  const rep = await verifyDiskImage(v.disks[0]!.path, { format: 'qcow2', highestAck: acked });
  assert.equal(rep.ok, true, rep.problems.join('; '));
}

/** An HA probe VM writing on host-a, its record's generation, and host-a's etcd member (to cut). */
async function haProbeOnA(name: string): Promise<{ vm: VmView; gen0: number; member: LabStatus['etcd'][number] }> {
  const vm = await newProbe(name, 'host-a', ['--ha']);
  await waitAcks(vm.id, 'host-a', 5);
  const gen0 = (await status()).vms.find((v) => v.name === name)!.generation;
  const st = await ferryOk<LabStatus>(['lab', 'status', '--dir', lab, '--json']);
  return { vm, gen0, member: st.etcd.find((m) => m.name === 'host-a')! };
}

let w1: VmView;

test(
  'drain: dry run shows the plan and a blocker; a real drain moves 4 VMs by priority under a limit ' +
    'of 2, the queue shows positions, heartbeats continue, the node stays paused',
  async () => {
    await ferryOk(['cluster', 'set', '--max-outgoing', '2', '--max-incoming', '2'], { lab });
    w1 = await newProbe('w1', 'host-c', ['--ha', '--priority', 'high']);
    // Its home is host-c, but an administrator placed it on host-a: the drain does not make it away.
    await newProbe('a5', 'host-a', ['--probe-no-writer', '--memory', '128', '--ha', '--preferred-owner', 'host-c']);
    for (const n of ['p2', 'p3']) await newProbe(n, 'host-c', ['--probe-no-writer', '--memory', '128']);
    await newProbe('p4', 'host-c', [
      '--probe-no-writer',
      '--memory',
      '128',
      '--ha',
      '--priority',
      'low',
      '--anti-affinity',
      'grp',
    ]);
    // A stopped VM on host-c's local storage: nobody else can run it.
    await ferryOk(['vm', 'new', 'loc1', '--host', 'host-c', '--guest', 'bootblock', '--json'], { lab });
    await waitAcks(w1.id, 'host-c', 15);

    const plan = await ferryOk<{
      items: Array<{ vm: string; to: string | null; priority: string; blockers: Array<{ code: string }> }>;
      blocked: number;
    }>(['cluster', 'drain', 'host-c', '--dry-run', '--json'], { lab });
    const loc = plan.items.find((i) => i.vm === 'loc1')!;
    assert.equal(loc.to, null);
    assert.ok(
      loc.blockers.some((b) => b.code === 'E_STORAGE_NOT_SHARED'),
      JSON.stringify(loc.blockers),
    );
    assert.equal(plan.blocked, 1);
    for (const n of ['w1', 'p2', 'p3', 'p4']) assert.match(plan.items.find((i) => i.vm === n)!.to ?? '', /^host-[ab]$/);
    assert.equal(plan.items[0]!.vm, 'w1', 'high priority first');
    assert.equal((await status()).nodes.find((n) => n.name === 'host-c')!.state, 'up', 'a dry run changes nothing');
    const human = await ferry(['cluster', 'drain', 'host-c', '--dry-run'], { lab });
    assert.equal(human.code, 0);
    assert.match(human.stdout, /loc1 .*BLOCKED.*E_STORAGE_NOT_SHARED/);

    await ferryOk(['vm', 'rm', 'loc1'], { lab });
    // Watch the queue through the API (every 100 ms) while the CLI starts the drain.
    const clients = new Clients(await loadContext({ lab }));
    let sawQueued = false;
    let sawPosition = false;
    let maxMoving = 0;
    const watching = new AbortController(); // aborted when the drain is over
    const watcher = (async () => {
      while (!watching.signal.aborted) {
        const [s, list] = await Promise.all([
          clients
            .host('host-a')
            .call(actions.clusterStatus, {}, { timeoutMs: 10_000 })
            .catch(() => null),
          clients
            .host('host-c')
            .call(actions.migrationList, { query: { all: 'false' } }, { timeoutMs: 10_000 })
            .catch(() => []),
        ]);
        if (s) {
          maxMoving = Math.max(maxMoving, s.queue.filter((q) => q.state === 'admitted' && q.from === 'host-c').length);
          if (s.queue.some((q) => q.state === 'queued' && q.position === 1 && q.batch === 'drain:host-c'))
            sawQueued = true;
        }
        if (list.some((m) => m.state === 'queued' && (m.queuePosition ?? 0) >= 1)) sawPosition = true;
        await sleep(100);
      }
    })();
    const t0 = Date.now();
    let b: BatchView;
    try {
      // The CLI follows the drain to its end through the agents' event streams: no read of the
      // cluster while events flow (its request log holds the drain's POST and the streams).
      const log = path.join(dir, 'drain-requests.json');
      const drained = await ferry(['cluster', 'drain', 'host-c'], {
        lab,
        timeoutMs: 400_000,
        env: requestLogEnv(log),
      });
      assert.equal(drained.code, 0, drained.stderr + drained.stdout);
      assert.match(drained.stdout, /drain of host-c: completed; host-c stays paused/);
      for (const n of ['w1', 'p2', 'p3', 'p4'])
        assert.match(drained.stderr, new RegExp(`^  ${n}: moved → host-[ab]`, 'm'));
      const requests = (await readRequestLog(log)).requests;
      assert.deepEqual(
        requests.filter((q) => q.startsWith('GET /v1/cluster')),
        [],
        `no read of the cluster while following: ${requests.join(', ')}`,
      );
      b = await waitBatch('host-c', (x) => x.state !== 'running');
    } finally {
      watching.abort();
      await watcher;
      for (const c of clients.all()) c.close();
    }
    process.stderr.write(
      `drain of 4 VMs (limit 2): ${Date.now() - t0} ms; ` +
        `${b.items.map((i) => `${i.vm}→${i.to} ${i.state} (${i.attempts})`).join(', ')}\n`,
    );
    assert.equal(b.state, 'completed', JSON.stringify(b.items));
    assert.ok(sawQueued, 'a queued move with position 1 was visible in cluster status');
    assert.ok(sawPosition, 'migration list showed a queued move with its position');
    // Adaptive concurrency is on (the default): what it learns stays within the limits.
    assert.equal((await status()).limits.adaptive, true);
    assert.ok(maxMoving <= 2, `never more than 2 moves out of host-c (saw ${maxMoving})`);
    for (const c of b.concurrency ?? []) assert.ok(c.level >= 1 && c.level <= 2, JSON.stringify(c));
    const where = await placement();
    for (const n of ['w1', 'p2', 'p3', 'p4']) assert.match(where[n]!, /^host-[ab]$/, `${n} left host-c`);
    await allRun();
    const s = await status();
    assert.equal(s.nodes.find((n) => n.name === 'host-c')!.state, 'paused');
    assert.equal(s.vms.find((v) => v.name === 'w1')!.owner, where.w1);
    // A paused node takes no VMs.
    const refused = await ferry(['move-vm', 'p2', '--to', 'host-c'], { lab });
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /paused/);
    await waitAcks(w1.id, where.w1!, 5);
    assertHeartbeatsContinue(await logs(w1.id), HOSTS, 'no heartbeat lost across the drain');
    // a5, placed off its home by an administrator, is not made away by the drain of its home
    // (the leader looks every 5 s; the drained VMs' marks are unit-tested, test/unit/cluster-rows).
    await sleep(6000);
    const a5 = (await status()).vms.find((v) => v.name === 'a5');
    assert.deepEqual([a5?.owner, a5?.away], ['host-a', null]);
    await ferryOk(['vm', 'stop', 'a5'], { lab });
    await ferryOk(['vm', 'rm', 'a5'], { lab });
  },
);

test('resume --failback brings the drained VMs back to their node', async () => {
  const t0 = Date.now();
  const log = path.join(dir, 'failback-requests.json');
  const r = await ferry(['cluster', 'resume', 'host-c', '--failback', '--json'], {
    lab,
    timeoutMs: 400_000,
    env: requestLogEnv(log),
  });
  assert.equal(r.code, 0, r.stderr + r.stdout);
  const requests = (await readRequestLog(log)).requests;
  assert.deepEqual(
    requests.filter((q) => q.startsWith('GET /v1/cluster')),
    [],
    `the fail-back is followed through events: ${requests.join(', ')}`,
  );
  const b = JSON.parse(r.stdout) as BatchView;
  assert.equal(b.kind, 'failback');
  assert.equal(b.state, 'completed', JSON.stringify(b.items));
  for (const c of b.concurrency ?? []) assert.ok(c.level >= 1 && c.level <= 2, JSON.stringify(c));
  process.stderr.write(`fail-back of ${b.items.length} VMs: ${Date.now() - t0} ms\n`);
  const where = await placement();
  for (const n of ['w1', 'p2', 'p3', 'p4']) assert.equal(where[n], 'host-c', `${n} back on host-c`);
  assert.equal((await status()).nodes.find((n) => n.name === 'host-c')!.state, 'up');
  assertHeartbeatsContinue(await logs(w1.id), HOSTS, 'no heartbeat lost across the fail-back');
});

test(
  'resume during a drain aborts it: queued moves are cancelled, each VM runs on exactly one host, ' +
    'the node takes VMs again',
  async () => {
    await ferryOk(['cluster', 'set', '--max-outgoing', '1'], { lab });
    // One move at a time out of host-c, held in its preparing phase: the rest of the drain
    // waits in the cluster queue when resume comes, whatever the speed of this machine.
    await hold();
    let r: { batch: BatchView };
    try {
      await ferryOk(['cluster', 'drain', 'host-c', '--no-wait'], { lab });
      await waitHeldDrain('host-c');
      r = await ferryOk<{ batch: BatchView }>(['cluster', 'resume', 'host-c', '--json'], { lab });
    } finally {
      await release();
    }
    assert.equal(r.batch.state, 'aborted');
    assert.ok(
      r.batch.items.some((i) => i.state === 'cancelled'),
      JSON.stringify(r.batch.items),
    );
    const b = await waitBatch('host-c', (x) => !x.items.some((i) => i.state === 'moving'), 120_000);
    assert.equal(b.state, 'aborted');
    const s = await status();
    assert.equal(s.nodes.find((n) => n.name === 'host-c')!.state, 'up');
    assert.equal(s.queue.length, 0, 'nothing left in the queue');
    const where = await placement();
    for (const i of b.items)
      assert.equal(where[i.vm], i.state === 'moved' ? i.to : 'host-c', `${i.vm} (${i.state}) is where its result says`);
    await allRun();
    await ferryOk(['cluster', 'set', '--max-outgoing', '2'], { lab });
    // Put everything back on host-c for the next test.
    const back = await ferry(['cluster', 'resume', 'host-c', '--failback'], { lab, timeoutMs: 400_000 });
    assert.equal(back.code, 0, back.stderr);
  },
);

const LEADER_KILLED =
  "the leader's agent killed mid-drain: another node leads; the drain completes, also when the leader " +
  'was the drained node (its fence keeps the node lease through the restart, the rolled-back move is retried)';
test(LEADER_KILLED, async () => {
  const leader = (await status()).leader!;
  assert.ok(leader);
  const st = await ferryOk<LabStatus>(['lab', 'status', '--dir', lab, '--json']);
  // One move out of host-c at a time, held in its preparing phase until the leader is dead
  // and back: the drain is still going when the leader dies, whatever the speed of this machine.
  await ferryOk(['cluster', 'set', '--max-outgoing', '1'], { lab });
  await hold();
  try {
    await ferryOk(['cluster', 'drain', 'host-c', '--no-wait'], { lab });
    const held = await waitHeldDrain('host-c');
    assert.equal(held.batches.find((b) => b.node === 'host-c')?.state, 'running', 'killed mid-drain');
    process.kill(st.hosts.find((h) => h.name === leader)!.agentPid!, 'SIGKILL');
    // systemd would restart it; so does the lab. However long that takes (within the grace), the
    // host's fence keeps the node's lease meanwhile: the node never goes down.
    await sleep(500);
    await ferryOk(['lab', 'up', '--dir', lab]);
  } finally {
    await release();
  }
  const b = await waitBatch('host-c', (x) => x.state !== 'running', 400_000);
  const s = await status();
  process.stderr.write(
    `leader ${leader} killed mid-drain of host-c; leader now ${s.leader}; ` +
      `${b.items.map((i) => `${i.vm} ${i.state} (${i.attempts}${i.reason ? `: ${i.reason}` : ''})`).join(', ')}\n`,
  );
  const where = await placement();
  // When the leader was the drained node itself, its restart rolled back the move it was running
  // (E_AGENT_RESTARTED) and the new leader retried it: the node stayed up, so nothing failed.
  assert.equal(b.state, 'completed', JSON.stringify(b.items));
  for (const i of b.items) {
    assert.equal(i.state, 'moved', JSON.stringify(i));
    assert.equal(where[i.vm], i.to, `${i.vm} is where it says`);
    assert.notEqual(where[i.vm], 'host-c');
  }
  assertHeartbeatsContinue(await logs(w1.id), HOSTS);
  await allRun();
  // No QEMU but the VMs' own: none of the rolled-back moves' incoming ones is left (also none that
  // an agent killed during its spawn never recorded).
  const running = await vms();
  for (const h of HOSTS) {
    const own = running.filter((v) => v.host === h).map((v) => v.pid);
    let extra: number[] = [];
    for (let i = 0; i < 50; i++) {
      extra = qemusOfRunDir(path.join(lab, 'hosts', h, 'data', 'run')).filter((p) => !own.includes(p));
      if (!extra.length) break;
      await sleep(200);
    }
    assert.deepEqual(
      extra,
      [],
      `${h} runs no QEMU but its VMs' (${running.map((v) => `${v.name}:${v.pid}`).join(', ')})`,
    );
  }
  await ferryOk(['cluster', 'resume', 'host-c'], { lab });
  await ferryOk(['cluster', 'set', '--max-outgoing', '2'], { lab });
});

test(
  'a node cut from etcd (its member stopped) fences its HA VM; the VM restarts elsewhere exactly ' +
    'once, every acked record intact',
  async () => {
    const v0 = await ferryOk<VmView>(['vm', 'show', 'w1', '--json'], { lab });
    const host = v0.host;
    const oldPid = v0.pid!;
    const gen0 = (await status()).vms.find((v) => v.name === 'w1')!.generation;
    const st = await ferryOk<LabStatus>(['lab', 'status', '--dir', lab, '--json']);
    const member = st.etcd.find((m) => m.name === host)!;
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    await waitAcks(w1.id, host, 5);
    const since = Date.now();
    process.kill(member.pid, 'SIGSTOP');
    const t0 = Date.now();
    let fencedAt = 0;
    let restartAt = 0;
    let newHost = '';
    try {
      while (Date.now() - t0 < 60_000 && !restartAt) {
        if (!fencedAt && !alive(oldPid)) fencedAt = Date.now() - t0;
        for (const h of HOSTS) {
          if (h === host || restartAt) continue;
          const text = await fsp.readFile(logOf(h, w1.id), 'utf8').catch(() => '');
          const m = await fsp.stat(logOf(h, w1.id)).then(
            (x) => x.mtimeMs,
            () => 0,
          );
          if (m > since && parseSerial(text).heartbeats.length > 0) {
            newHost = h;
            restartAt = Date.now() - t0;
          }
        }
        await sleep(100);
      }
      // An administrator starts the fenced VM on the node cut from etcd: refused, since the
      // cluster's record cannot be read there (the VM may run elsewhere: here it does).
      if (restartAt) {
        const r = await ferry(['vm', 'start', 'w1'], { lab });
        assert.notEqual(r.code, 0, r.stdout);
        assert.match(r.stderr, new RegExp(`Cannot start HA VM 'w1' on host '${host}': the cluster's record of it`));
      }
    } finally {
      process.kill(member.pid, 'SIGCONT');
    }
    process.stderr.write(
      `isolation of ${host}: HA VM fenced after ${fencedAt} ms, heartbeat on ${newHost} after ${restartAt} ms\n`,
    );
    assert.ok(fencedAt > 0, 'the isolated node stopped its HA VM');
    assert.ok(fencedAt < NODE_TTL_S * 1000, `…before its lease could expire (${fencedAt} ms)`);
    assert.ok(restartAt > fencedAt, 'the VM ran elsewhere only after it stopped here: never two copies');
    // The isolated node comes back: it forgets w1, which runs once, where the cluster put it.
    let owners: string[] = [];
    for (let i = 0; i < 120; i++) {
      owners = (await vms()).filter((v) => v.name === 'w1').map((v) => v.host);
      if (owners.length === 1 && owners[0] === newHost) break;
      await sleep(250);
    }
    assert.deepEqual(owners, [newHost]);
    const rec = (await status()).vms.find((v) => v.name === 'w1')!;
    assert.equal(rec.owner, newHost);
    assert.ok(
      rec.generation > gen0,
      `the restart claimed the VM with a new fencing generation (${gen0} → ${rec.generation})`,
    );
    // Exactly once: no other node booted it since the cut.
    for (const h of HOSTS) {
      if (h === newHost || h === host) continue;
      const m = await fsp.stat(logOf(h, w1.id)).then(
        (x) => x.mtimeMs,
        () => 0,
      );
      assert.ok(m <= since, `${h} did not run w1 after the cut`);
    }
    assert.equal(
      (await hostQemuPids(path.join(lab, 'hosts', host, 'data'))).length,
      (await vms()).filter((v) => v.host === host && v.state === 'running').length,
      'no stray QEMU on the isolated node',
    );
    let s2 = parseSerial('');
    for (let i = 0; i < 300 && s2.writerStart === null; i++) {
      await sleep(200);
      s2 = parseSerial(await fsp.readFile(logOf(newHost, w1.id), 'utf8').catch(() => ''));
    }
    const ackedBefore = parseSerial(await fsp.readFile(logOf(host, w1.id), 'utf8')).highestAck ?? 0;
    assert.ok(
      (s2.writerStart ?? 0) > ackedBefore,
      'the writer continues after every record acknowledged before the cut',
    );
    await stopVerified(w1);
  },
);

test(
  'an HA restart whose node does not answer in time stays given to that node: the VM boots there, ' +
    'once, never also on another node',
  async () => {
    const { vm: u1, gen0, member } = await haProbeOnA('u1');
    const heldFile = path.join(holds, 'ha-start');
    await fsp.writeFile(heldFile, '');
    const since = Date.now();
    process.kill(member.pid, 'SIGSTOP');
    let to = '';
    try {
      // host-a fences u1; the leader gives it to another node, whose boot waits at the hold.
      for (let i = 0; i < 600 && !to; i++) {
        const held = await fsp.stat(`${heldFile}.held`).then(
          () => true,
          () => false,
        );
        const rec = held ? (await status().catch(() => null))?.vms.find((v) => v.name === 'u1') : undefined;
        if (rec && rec.owner !== 'host-a') to = rec.owner;
        else await sleep(100);
      }
      assert.ok(to, 'the leader gave u1 to another node, which holds its boot');
      // Past the leader's 8 s wait and two of its 5 s passes: the record still gives it to `to`.
      await sleep(15_000);
      const rec = (await status()).vms.find((v) => v.name === 'u1')!;
      assert.deepEqual(
        [rec.owner, rec.generation, rec.restartFrom],
        [to, gen0 + 1, 'host-a'],
        'still given to the node that did not answer, the restart pending in its record',
      );
    } finally {
      await fsp.rm(heldFile, { force: true });
      process.kill(member.pid, 'SIGCONT');
    }
    // Released: it boots on `to`, and only there.
    let owners: string[] = [];
    for (let i = 0; i < 240; i++) {
      owners = (await vms()).filter((v) => v.name === 'u1' && v.state === 'running').map((v) => v.host);
      if (owners.length === 1 && owners[0] === to) break;
      await sleep(250);
    }
    assert.deepEqual(owners, [to]);
    await waitAcks(u1.id, to, 3);
    for (const h of HOSTS) {
      if (h === to || h === 'host-a') continue;
      const m = await fsp.stat(logOf(h, u1.id)).then(
        (x) => x.mtimeMs,
        () => 0,
      );
      assert.ok(m <= since, `${h} never ran u1`);
    }
    let rec = (await status()).vms.find((v) => v.name === 'u1')!;
    for (let i = 0; i < 40 && rec.restartFrom; i++) {
      await sleep(250);
      rec = (await status()).vms.find((v) => v.name === 'u1')!;
    }
    assert.deepEqual([rec.owner, rec.generation, rec.restartFrom], [to, gen0 + 1, null], 'confirmed by its boot');
    await stopVerified(u1);
  },
);

test(
  'an HA VM every node refuses is given back to its down node and tried again: it runs once the ' +
    'refusals end, on one node',
  async () => {
    const { vm: u2, gen0, member } = await haProbeOnA('u2');
    const refuse = path.join(holds, 'ha-start-refuse');
    await fsp.writeFile(refuse, '');
    process.kill(member.pid, 'SIGSTOP');
    try {
      // host-b and host-c refuse it in turn (two generations); the leader gives it back to host-a
      // (a third), and the next pass tries again (a fourth and more): before, the record stayed
      // with the last node that refused, and nothing tried again.
      let rec: ClusterView['vms'][number] | undefined;
      for (let i = 0; i < 300; i++) {
        rec = (await status().catch(() => null))?.vms.find((v) => v.name === 'u2');
        if (rec && rec.generation >= gen0 + 4) break;
        await sleep(200);
      }
      assert.ok(rec && rec.generation >= gen0 + 4, JSON.stringify(rec));
      assert.deepEqual(
        (await vms()).filter((v) => v.name === 'u2' && v.state === 'running'),
        [],
        'u2 runs nowhere while every node refuses',
      );
    } finally {
      await fsp.rm(refuse, { force: true });
    }
    // The refusals end: a pass restarts it, on one node.
    let owners: string[] = [];
    try {
      for (let i = 0; i < 240; i++) {
        owners = (await vms()).filter((v) => v.name === 'u2' && v.state === 'running').map((v) => v.host);
        if (owners.length === 1) break;
        await sleep(250);
      }
    } finally {
      process.kill(member.pid, 'SIGCONT');
    }
    assert.equal(owners.length, 1, JSON.stringify(owners));
    assert.notEqual(owners[0], 'host-a');
    await waitAcks(u2.id, owners[0]!, 3);
    await sleep(3000);
    assert.deepEqual(
      (await vms()).filter((v) => v.name === 'u2' && v.state === 'running').map((v) => v.host),
      owners,
      'still once, host-a back',
    );
    await stopVerified(u2);
  },
);

test('an HA VM powered off by its guest is stopped on purpose: its record goes, no node restarts it', async () => {
  const g1 = await newProbe('g1', 'host-b', ['--ha', '--probe-no-writer', '--memory', '128']);
  let rec: ClusterView['vms'][number] | undefined;
  for (let i = 0; i < 60 && !rec; i++) {
    rec = (await status()).vms.find((v) => v.name === 'g1');
    if (!rec) await sleep(250);
  }
  assert.equal(rec?.owner, 'host-b', 'g1 has its record while it runs');
  await waitSerial(logOf('host-b', g1.id), { heartbeats: 2, acks: 0, lab, vm: 'g1', host: 'host-b' });
  // The power button from inside: as the guest's own `poweroff` (the probe guest powers off on it).
  const qmp = await QmpClient.connect(path.join(lab, 'hosts', 'host-b', 'data', 'run', g1.id, 'qmp-admin.sock'), {
    vm: 'g1',
  });
  try {
    await qmp.execute('system_powerdown');
  } finally {
    qmp.close();
  }
  let state = '';
  let left = true;
  for (let i = 0; i < 240 && (state !== 'stopped' || left); i++) {
    state = (await vms()).find((v) => v.name === 'g1')?.state ?? '';
    left = (await status()).vms.some((v) => v.name === 'g1');
    if (state !== 'stopped' || left) await sleep(250);
  }
  assert.equal(state, 'stopped');
  assert.equal(left, false, 'no HA record is left for a leader to restart it from');
  await ferryOk(['vm', 'rm', 'g1'], { lab });
});

test('an HA VM whose QEMU dies on its own runs again on its node, once in 15 min; then it stays stopped', async () => {
  const c1 = await newProbe('c1', 'host-c', ['--ha']);
  await waitAcks(c1.id, 'host-c', 5);
  const gen0 = (await status()).vms.find((v) => v.name === 'c1')!.generation;
  const show = (): Promise<VmView> => ferryOk<VmView>(['vm', 'show', 'c1', '--json'], { lab });
  const pid0 = (await show()).pid!;
  process.kill(pid0, 'SIGKILL'); // as a crash or the OOM killer: no SHUTDOWN event
  let v = await show();
  for (let i = 0; i < 240 && !(v.state === 'running' && v.pid !== pid0); i++) {
    await sleep(250);
    v = await show();
  }
  assert.deepEqual([v.host, v.state], ['host-c', 'running'], 'restarted on its node');
  assert.notEqual(v.pid, pid0);
  const rec = (await status()).vms.find((x) => x.name === 'c1')!;
  assert.deepEqual([rec.owner, rec.generation], ['host-c', gen0 + 1], 'claimed under a new generation');
  await waitAcks(c1.id, 'host-c', 3);
  // A second death within the window: left stopped (a VM that keeps crashing is not restarted in a loop).
  process.kill(v.pid!, 'SIGKILL');
  await sleep(6000);
  v = await show();
  assert.deepEqual([v.host, v.state], ['host-c', 'stopped']);
  assert.deepEqual(
    (await vms()).filter((x) => x.name === 'c1').map((x) => x.host),
    ['host-c'],
    'not restarted anywhere else either (its node is up)',
  );
  await ferryOk(['vm', 'start', 'c1'], { lab });
  await waitAcks(c1.id, 'host-c', 3);
  await stopVerified(c1);
});
