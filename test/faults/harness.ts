// The fault matrix on real QEMU: one cell = one move (kind) interrupted in one phase by one
// fault, on a --netns lab. Every cell states the outcomes it allows (expect.ts) and fails on
// any other; in every cell the VM runs on exactly one host (the destination only if the move
// completed), every acknowledged record is on its disk (probe) or the memory pattern is
// intact (bootblock), the record says what happened, no stream or NBD byte reaches the
// destination on any interface but its migration network, and a retry succeeds.
//
// Short phases (preparing, switching-over) are held open with the agents' test hook
// (FERRY_TEST_HOLD_DIR, see src/migration/policy.ts); the copy phases are slowed with
// --bandwidth instead, so the fault hits a copy that really runs.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { before, after, type test } from 'node:test';
import { ferry, ferryOk } from '../e2e/cli.js';
import { hostData, serialLog, waitProbe, assertHeartbeatsContinue, kernelOopsed, type TestLab } from '../e2e/lab.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { verifyGuestMemory } from '../../guest/bootblock.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { hostQemuPids, type LabStatus } from '../../src/lab/lab.js';
import { sleep } from '../../src/util/exec.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { expected, outcomeProblem, type Outcome } from './expect.js';
import { readStreamCounters, startStreamCounters, stopStreamCounters, type StreamBytes } from './stream-counters.js';
import { labTempDir } from '../helpers.js';

export type Kind = 'live' | 'shared-nothing' | 'storage';
export type Phase = 'preparing' | 'copying-storage' | 'copying-memory' | 'switching-over';
export type Fault =
  'dest-qemu-killed' | 'dest-agent-killed' | 'source-agent-killed' | 'migration-net-cut' | 'dest-disk-full' | 'cancel';
export type Guest = 'probe' | 'bootblock';

export const KINDS: Kind[] = ['live', 'shared-nothing', 'storage'];
export const PHASES: Phase[] = ['preparing', 'copying-storage', 'copying-memory', 'switching-over'];
export const FAULTS: Fault[] = [
  'dest-qemu-killed',
  'dest-agent-killed',
  'source-agent-killed',
  'migration-net-cut',
  'dest-disk-full',
  'cancel',
];

/** Why a cell does not apply, or null when it does. */
export function notApplicable(kind: Kind, phase: Phase, fault: Fault): string | null {
  if (kind === 'live' && phase === 'copying-storage') return 'shared storage: no disk is copied';
  if (kind === 'storage' && phase === 'copying-memory') return 'a storage move copies no memory';
  if (kind === 'live' && fault === 'dest-disk-full')
    return 'the disks stay on the shared pool: the destination writes none';
  if (kind === 'storage' && (fault === 'dest-qemu-killed' || fault === 'dest-agent-killed'))
    return 'a storage move has one host: no destination QEMU or agent';
  if (kind === 'storage' && fault === 'migration-net-cut') return 'a storage move stays on one host: no network';
  if (kind === 'shared-nothing' && phase === 'switching-over' && fault === 'dest-disk-full')
    return (
      'the guest is paused during switch-over and writes nothing; ' +
      "a pool that fills later is the guest's I/O error, not the move's"
    );
  return null;
}

const ab = {
  live: 'lv',
  'shared-nothing': 'sn',
  storage: 'st',
  preparing: 'pr',
  'copying-storage': 'cs',
  'copying-memory': 'cm',
  'switching-over': 'so',
  'dest-qemu-killed': 'dq',
  'dest-agent-killed': 'da',
  'source-agent-killed': 'sa',
  'migration-net-cut': 'nc',
  'dest-disk-full': 'df',
  cancel: 'cx',
} as const;

export interface FaultLab extends TestLab {
  holds: string;
  tiny: string;
  env: NodeJS.ProcessEnv;
}

/** A 2-host --netns lab for one test file, with the test hooks on; removed whatever happens. */
export function useFaultLab(): FaultLab {
  const l: FaultLab = { dir: '', lab: '', holds: '', tiny: '', env: {}, status: { dir: '', hosts: [], etcd: [] } };
  before(async () => {
    l.dir = await labTempDir('ferry-e2e-faults-');
    l.lab = path.join(l.dir, 'lab');
    l.holds = path.join(l.dir, 'holds');
    l.tiny = path.join(l.dir, 'tiny');
    await fsp.mkdir(l.holds);
    l.env = { FERRY_TEST_HOLD_DIR: l.holds, FERRY_MIGRATION_STALL_S: process.env.FERRY_MIGRATION_STALL_S ?? '8' };
    // A small pool on each host that a test can fill up (64 MiB tmpfs per host), mounted
    // before the agents start: `ip netns exec` gives each agent its own mount namespace,
    // which does not see later mounts when / is not a shared mount.
    for (const h of ['host-a', 'host-b']) {
      const d = path.join(l.tiny, h);
      await fsp.mkdir(d, { recursive: true });
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', d]);
    }
    l.status = await labUp(l);
    for (const h of ['host-a', 'host-b'])
      await ferryOk(['pool', 'add', 'tiny', '--host', h, '--path', path.join(l.tiny, h)], { lab: l.lab });
  });
  after(async () => {
    await ferry(['lab', 'down', '--dir', l.lab]);
    for (const h of ['host-a', 'host-b']) {
      try {
        execFileSync('umount', ['-l', path.join(l.tiny, h)]);
      } catch {
        /* not mounted */
      }
    }
    await fsp.rm(l.dir, { recursive: true, force: true });
  });
  return l;
}

/** `lab up` (also: restarts killed agents) with the lab's test environment. */
export async function labUp(l: FaultLab): Promise<LabStatus> {
  const r = await ferry(['lab', 'up', '--dir', l.lab, '--netns', '--json'], { env: l.env, timeoutMs: 240_000 });
  if (r.code !== 0) throw new Error(`lab up exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as LabStatus;
}

const show = (l: TestLab, name: string): Promise<VmView> =>
  ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: l.lab });

async function record(l: TestLab, id: string): Promise<MigrationRecord | null> {
  const r = await ferry(['migration', 'show', id, '--json'], { lab: l.lab });
  return r.code === 0 ? (JSON.parse(r.stdout) as MigrationRecord) : null; // null: the source agent is down
}

const TERMINAL = ['completed', 'failed', 'cancelled'];

async function waitRecord(l: TestLab, id: string, states: string[], timeoutMs: number): Promise<MigrationRecord> {
  const until = Date.now() + timeoutMs;
  let last: MigrationRecord | null = null;
  for (;;) {
    const r = await record(l, id);
    if (r) last = r;
    if (r && states.includes(r.state)) return r;
    if (r && TERMINAL.includes(r.state))
      throw new Error(`migration ended ${r.state} before reaching ${states.join('/')}: ${JSON.stringify(r.error)}`);
    if (Date.now() > until)
      throw new Error(
        `migration ${id} did not reach ${states.join('/')} within ${timeoutMs} ms (last: ${last?.state})`,
      );
    await sleep(150);
  }
}

async function agentPid(l: TestLab, host: string): Promise<number> {
  const st = await ferryOk<LabStatus>(['lab', 'status', '--dir', l.lab, '--json']);
  const pid = st.hosts.find((h) => h.name === host)?.agentPid;
  assert.ok(pid, `${host}'s agent runs`);
  return pid;
}

async function fill(dir: string): Promise<string> {
  const f = path.join(dir, 'filler');
  const st = await fsp.statfs(dir);
  await fsp.writeFile(f, Buffer.alloc(Math.max(0, st.bavail * st.bsize), 1)).catch(() => undefined);
  return f;
}

export interface CellResult {
  kind: Kind;
  phase: Phase;
  fault: Fault;
  guest: Guest;
  ok: boolean;
  /** The final states this cell allows (expect.ts). */
  allowed: readonly Outcome[];
  state: string | null;
  code: string | null;
  message: string | null;
  cancelExit?: number;
  seconds: number;
  problem?: string;
  /** Seconds from the cell's start at each step, to see where the time goes. */
  marks: Record<string, number>;
  /** Heartbeat lines split between the hosts' consoles by a switch-over (see runCell). */
  splitLines?: number;
  /** The record's log (without progress lines): what the move said happened. */
  events?: string[];
  /** Stream/NBD bytes the destination received per interface during the move, and the record's RAM bytes. */
  stream?: StreamBytes & { moved: number };
}

/**
 * What the source's kernel may have accepted from QEMU without the destination receiving it
 * (the stream's and the NBD connection's send buffers, tcp_wmem ≤ 4 MiB each): QEMU counts
 * RAM as transferred once written to its socket.
 */
const UNSENT_SLACK = 8 * 1024 * 1024;

/** How moves that copy disks copy them (`--resumable`), when set; else the default (`auto`: the mirror here). */
const RESUMABLE = process.env.FERRY_FAULTS_RESUMABLE ?? '';

/** Where the cell results go (one JSON line each; scripts/test faults sets it), for docs/fault-matrix.md. */
export const RESULTS = process.env.FERRY_FAULTS_RESULTS ?? '';

/** The move's command line for a kind (and its slow-down for copy phases). */
function moveArgs(
  l: FaultLab,
  kind: Kind,
  vm: string,
  from: string,
  to: string,
  o: { bandwidth?: number; tiny?: boolean; n: number; guest: Guest },
): string[] {
  const extra = [
    ...(o.bandwidth ? ['--bandwidth', String(o.bandwidth)] : []),
    // FERRY_FAULTS_RESUMABLE=always|never: the copies by backup passes (or the mirror) whatever the size.
    ...(RESUMABLE && kind !== 'live' ? ['--resumable', RESUMABLE] : []),
    ...(o.guest === 'bootblock' && kind !== 'storage' ? ['--max-downtime', '5000'] : []),
  ];
  if (kind === 'live') return ['move-vm', vm, '--to', to, ...extra];
  if (kind === 'shared-nothing')
    return [
      'move-vm',
      vm,
      '--to',
      to,
      '--include-storage',
      ...(o.tiny ? ['--storage-path', path.join(l.tiny, to, vm)] : []),
      ...extra,
    ];
  const dest = o.tiny ? path.join(l.tiny, from, vm) : path.join(hostData(l, from), 'pools', 'local', `${vm}-${o.n}`);
  return ['move-storage', vm, '--path', dest, ...extra];
}

/** The host the VM runs on, once exactly one host has it (the other's cleanup may lag). */
async function assertOnOneHost(l: FaultLab, vm: VmView): Promise<VmView> {
  const until = Date.now() + 90_000;
  for (;;) {
    const v = await show(l, vm.name);
    const other = v.host === 'host-a' ? 'host-b' : 'host-a';
    const otherPids = await hostQemuPids(hostData(l, other));
    const otherList = await ferry(['vm', 'list', '--host', other, '--json'], { lab: l.lab });
    const registeredThere =
      otherList.code === 0 && (JSON.parse(otherList.stdout) as VmView[]).some((x) => x.name === vm.name);
    const herePids = await hostQemuPids(hostData(l, v.host));
    const problem =
      v.state !== 'running'
        ? `state ${v.state} on ${v.host}`
        : otherPids.length
          ? `a QEMU is left on ${other}`
          : registeredThere
            ? `also registered on ${other}`
            : herePids.length !== 1
              ? `${herePids.length} QEMUs on ${v.host}`
              : '';
    if (!problem) return v;
    if (Date.now() > until) assert.fail(`the VM is not on exactly one host: ${problem}${await whyNotRunning(l, v)}`);
    await sleep(500);
  }
}

/**
 * Why a VM is not running, for the failure message: its QEMU's last words (the run folder's
 * stderr log, if the agent kept it) and what each agent logged about it last.
 */
async function whyNotRunning(l: FaultLab, v: VmView): Promise<string> {
  if (v.state === 'running') return '';
  const parts: string[] = [];
  for (const h of ['host-a', 'host-b']) {
    const stderr = await fsp
      .readFile(path.join(hostData(l, h), 'run', v.id, 'qemu.stderr.log'), 'utf8')
      .catch(() => '');
    if (stderr.trim()) parts.push(`QEMU's stderr on ${h}:\n${stderr.trim().split('\n').slice(-10).join('\n')}`);
    const log = await fsp.readFile(path.join(path.dirname(hostData(l, h)), 'agent.log'), 'utf8').catch(() => '');
    const lines = log.split('\n').filter((x) => x.includes(v.id) || x.includes(v.name));
    if (lines.length) parts.push(`${h}'s agent log about it:\n${lines.slice(-12).join('\n')}`);
  }
  return parts.length ? `\n${parts.join('\n')}` : '';
}

/** The guest runs: its console on `host` grows. */
async function assertRuns(l: FaultLab, v: VmView, guest: Guest): Promise<void> {
  const f = serialLog(l, v.host, v.id);
  if (guest === 'probe') {
    const n0 = parseSerial(await fsp.readFile(f, 'utf8')).heartbeats.length;
    await sleep(1500);
    const text = await fsp.readFile(f, 'utf8');
    if (parseSerial(text).heartbeats.length > n0 + 10) return;
    // A guest that stopped must be explained: what its kernel printed last (an oops after a
    // move under TCG is QEMU-NOTES §E), not only that it stopped.
    const said = text
      .split('\n')
      .filter((x) => x.trim() && !x.includes('ferry-'))
      .slice(-6)
      .join(' | ');
    const oops = kernelOopsed(text);
    assert.fail(
      `the guest runs on ${v.host}: its console stopped` +
        (oops ? ' with a kernel oops (QEMU 7.2 under TCG after a move: docs/tcg-moves.md)' : '') +
        `; its last other lines: ${said.slice(-600) || '(none)'}`,
    );
  }
}

async function checkMemory(l: FaultLab, v: VmView): Promise<void> {
  const run = path.join(hostData(l, v.host), 'run', v.id);
  const qmp = await QmpClient.connect(path.join(run, 'qmp-admin.sock'), { vm: v.name });
  try {
    // QEMU (its user) writes the dump: into its run folder, the one folder it may write.
    const rep = await verifyGuestMemory(qmp, path.join(run, `${v.name}.dump`));
    assert.equal(rep.ok, true, `memory pattern broken on ${v.host}: bad pages ${rep.badPages.slice(0, 10).join(',')}`);
  } finally {
    qmp.close();
  }
}

/** Runs one cell end to end; throws (test failure) when an expected outcome does not hold. */
export async function runCell(
  l: FaultLab,
  kind: Kind,
  phase: Phase,
  fault: Fault,
  guest: Guest = 'probe',
): Promise<CellResult> {
  const t0 = Date.now();
  const name = `${ab[kind]}-${ab[phase]}-${ab[fault]}${guest === 'bootblock' ? '-bb' : ''}`;
  const exp = expected(kind, phase, fault);
  const res: CellResult = {
    kind,
    phase,
    fault,
    guest,
    allowed: exp.outcomes,
    ok: false,
    state: null,
    code: null,
    message: null,
    seconds: 0,
    marks: {},
  };
  const mark = (k: string): void => {
    res.marks[k] = Math.round((Date.now() - t0) / 100) / 10;
  };
  const holdFile = phase === 'preparing' || phase === 'switching-over' ? path.join(l.holds, phase) : null;
  let filler: string | null = null;
  let cut = false;
  // The destination's namespace, when the move crosses hosts: its stream bytes are counted there.
  const dstNs = kind === 'storage' ? undefined : l.status.hosts.find((h) => h.name === 'host-b')?.netns;
  try {
    // Disk copies get a second disk with 20 MiB of real data: the copy then writes for ~20 s
    // at 1 MiB/s (the probe's own disk is mostly unallocated, which a mirror skips at once).
    const filled = kind !== 'live' && (phase === 'copying-storage' || fault === 'dest-disk-full');
    const fillDisk = path.join(hostData(l, 'host-a'), 'pools', 'local', `${name}-fill.qcow2`);
    if (filled) {
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', fillDisk, '32M']);
      execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 20M', fillDisk], { stdio: 'ignore' });
    }
    const vm = await ferryOk<VmView>(
      [
        'vm',
        'new',
        name,
        '--host',
        'host-a',
        '--guest',
        guest,
        ...(kind === 'live' ? ['--path', path.join(l.lab, 'shared', name)] : []),
        ...(filled ? (guest === 'probe' ? ['--disk', '64M', '--attach', fillDisk] : ['--attach', fillDisk]) : []),
        '--start',
        '--json',
      ],
      { lab: l.lab },
    );
    if (guest === 'probe') await waitProbe(l, vm, 10, 90_000);
    else await sleep(2000);
    const [src, dst] = kind === 'storage' ? ['host-a', 'host-a'] : ['host-a', 'host-b'];
    // Copy phases are slowed so the fault hits a running copy; held phases run at full speed.
    const bandwidth = phase === 'copying-storage' ? 1 : phase === 'copying-memory' ? 2 : undefined;
    mark('booted');
    if (kind !== 'storage') {
      assert.ok(dstNs, 'the destination runs in its own network namespace');
      await startStreamCounters(dstNs);
    }
    if (holdFile) await fsp.writeFile(holdFile, name);
    const id = (
      await ferryOk<string>(
        [
          ...moveArgs(l, kind, name, src, dst, {
            ...(bandwidth ? { bandwidth } : {}),
            tiny: fault === 'dest-disk-full',
            n: 1,
            guest,
          }),
          '--no-wait',
        ],
        { lab: l.lab },
      )
    ).trim();
    await waitRecord(l, id, [phase], 180_000);
    if (phase !== 'preparing' && phase !== 'switching-over') await sleep(700); // well inside the copy

    mark('in-phase');
    // The fault.
    let restartAgents = false;
    switch (fault) {
      case 'dest-qemu-killed': {
        // The record says preparing before the destination has made its disks and started QEMU
        // (the hold comes after that): wait for it.
        let mine: number[] = [];
        for (let i = 0; i < 300 && !mine.length; i++) {
          if (i) await sleep(100);
          const pids = await hostQemuPids(hostData(l, dst));
          mine = pids.filter((p) => {
            try {
              return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(vm.id);
            } catch {
              return false; // gone meanwhile
            }
          });
        }
        assert.ok(mine.length, 'the destination QEMU runs');
        for (const p of mine) process.kill(p, 'SIGKILL');
        break;
      }
      case 'dest-agent-killed':
        process.kill(await agentPid(l, dst), 'SIGKILL');
        restartAgents = true;
        break;
      case 'source-agent-killed':
        process.kill(await agentPid(l, src), 'SIGKILL');
        restartAgents = true;
        break;
      case 'migration-net-cut':
        await ferryOk(['lab', 'cut', dst, '--link', 'migration'], { lab: l.lab });
        cut = true;
        break;
      case 'dest-disk-full':
        filler = await fill(path.join(l.tiny, dst));
        if (holdFile) await sleep(3000); // let the running guest's mirrored writes meet the full pool
        break;
      case 'cancel': {
        const c = await ferry(['migration', 'cancel', id], { lab: l.lab });
        res.cancelExit = c.code;
        // Refused during switch-over (the move goes on), accepted before.
        if (phase === 'switching-over') assert.notEqual(c.code, 0, 'cancel is refused during switch-over');
        else assert.equal(c.code, 0, `cancel accepted: ${c.stderr}`);
        break;
      }
    }
    if (holdFile) await fsp.rm(holdFile, { force: true });
    if (restartAgents) {
      await sleep(fault === 'source-agent-killed' ? 2000 : 3000); // the other side notices, or not
      await labUp(l);
    }
    const end = await waitRecord(l, id, TERMINAL, 240_000);
    mark('ended');
    // Only RAM is counted as sent on the wire; a mirror's bytes include the unallocated space it skips.
    const diskBytes = end.disks.reduce((a, d) => a + d.bytesDone, 0);
    if (dstNs) res.stream = { ...(await readStreamCounters(dstNs)), moved: end.bytesTransferred - diskBytes };
    res.state = end.state;
    res.code = end.error?.code ?? null;
    res.message = end.error?.message ?? null;
    res.events = end.events
      .map((e) => `${e.at.slice(11, 21)} ${e.message}`)
      .filter((m) => !/\d+%/.test(m))
      .slice(-8);
    if (cut) {
      await ferryOk(['lab', 'restore', dst, '--link', 'migration'], { lab: l.lab });
      cut = false;
    }
    if (filler) {
      await fsp.rm(filler, { force: true });
      filler = null;
    }

    // The record says what happened, and it is an outcome this cell allows.
    const wrong = outcomeProblem(exp, end);
    if (wrong) assert.fail(wrong);
    if (res.stream) {
      // The stream and NBD exports listen on the migration address only: nothing of them may
      // reach the destination over the management network (or loopback), cut link or not.
      const s = res.stream;
      assert.equal(s.management, 0, `${s.management} stream/NBD bytes reached ${dst} on its management interface`);
      assert.equal(s.loopback, 0, `${s.loopback} stream/NBD bytes reached ${dst} on loopback`);
      // The counter sees the stream: the RAM the record counts as sent arrived on the migration network.
      assert.ok(
        s.migration + UNSENT_SLACK >= s.moved,
        `the record sent ${s.moved} bytes of RAM but ${dst} received ${s.migration} on its migration interface`,
      );
      if (exp.streamOnMigrationNetOnly && phase !== 'preparing')
        assert.ok(s.migration > 0, `${dst} received no stream bytes before the cut: the counters see nothing`);
    }
    // Exactly one host; it is the source unless the move completed.
    const v = await assertOnOneHost(l, vm);
    assert.equal(v.host, end.state === 'completed' ? dst : src, `the VM is on ${v.host}`);
    if (kind === 'storage' && end.state !== 'completed')
      assert.deepEqual(
        v.disks.map((d) => d.path),
        vm.disks.map((d) => d.path),
        'the disks stay where they were',
      );
    await assertRuns(l, v, guest);
    if (guest === 'bootblock') await checkMemory(l, v);

    mark('checked');
    // A retry succeeds (back to the source if the move completed after all).
    const [rFrom, rTo] =
      kind === 'storage' ? ['host-a', 'host-a'] : [v.host, v.host === 'host-a' ? 'host-b' : 'host-a'];
    const retry = await ferry([...moveArgs(l, kind, name, rFrom, rTo, { n: 2, guest }), '--json'], {
      lab: l.lab,
      timeoutMs: 300_000,
    });
    assert.equal(retry.code, 0, `retry: ${retry.stderr}`);
    const rr = JSON.parse(retry.stdout) as MigrationRecord;
    assert.equal(rr.state, 'completed', `retry: ${JSON.stringify(rr.error)}`);
    mark('retried');
    const v2 = await assertOnOneHost(l, vm);
    assert.equal(v2.host, rTo);
    if (guest === 'bootblock') {
      await checkMemory(l, v2);
    } else {
      await waitProbe(l, v2, 10, 60_000).catch(() => undefined);
      await assertRuns(l, v2, guest);
      // Every acknowledged record is on the disk; no heartbeat lost across the hosts.
      // A forced stop is QMP 'quit': QEMU flushes; acknowledged records were written O_DSYNC anyway.
      await ferryOk(['vm', 'stop', name, '--force'], { lab: l.lab, timeoutMs: 120_000 });
      mark('stopped');
      const logs = await Promise.all(
        ['host-a', 'host-b'].map((h) => fsp.readFile(serialLog(l, h, vm.id), 'utf8').catch(() => '')),
      );
      const ack = Math.max(...logs.map((t) => parseSerial(t).highestAck ?? 0));
      assert.ok(ack > 0, 'the guest acknowledged records');
      const disk = (await show(l, name)).disks[0]!;
      const rep = await verifyDiskImage(disk.path, { format: disk.format as 'qcow2', highestAck: ack });
      assert.equal(rep.ok, true, `records: ${rep.problems.slice(0, 3).join('; ')}`);
      if (kind !== 'storage') {
        // A line cut by a switch-over is found joined from its two halves (splitHeartbeats).
        const c = assertHeartbeatsContinue(logs, ['host-a', 'host-b'], 'heartbeats lost');
        res.splitLines = c.split.length;
      }
    }
    mark('verified');
    await ferryOk(['vm', 'stop', name, '--force'], { lab: l.lab }).catch(() => undefined);
    await ferryOk(['vm', 'rm', name], { lab: l.lab });
    res.ok = true;
    return res;
  } catch (err) {
    res.problem = (err as Error).message.slice(0, 500);
    throw err;
  } finally {
    if (holdFile) await fsp.rm(holdFile, { force: true });
    if (dstNs) await stopStreamCounters(dstNs);
    if (cut) await ferry(['lab', 'restore', dst0(kind), '--link', 'migration'], { lab: l.lab });
    if (filler) await fsp.rm(filler, { force: true });
    // A failed cell must not break the next: agents up, VM gone.
    if (!res.ok) {
      await labUp(l).catch(() => undefined);
      await ferry(['vm', 'stop', name, '--force'], { lab: l.lab });
      await ferry(['vm', 'rm', name], { lab: l.lab });
    }
    res.seconds = Math.round((Date.now() - t0) / 100) / 10;
    if (RESULTS) await fsp.appendFile(RESULTS, JSON.stringify(res) + '\n');
  }
}

const dst0 = (kind: Kind): string => (kind === 'storage' ? 'host-a' : 'host-b');

/**
 * Declares one node test per cell of a kind. FERRY_FAULTS_ONLY=substr[,substr...] runs only
 * the cells whose "kind phase fault" contains one of them (the rest are skipped, saying so).
 */
export function matrixTests(
  kind: Kind,
  register: typeof test,
  o: { guest?: Guest; phases?: Phase[]; faults?: Fault[] } = {},
): void {
  const L = useFaultLab();
  const guest = o.guest ?? 'probe';
  const only = process.env.FERRY_FAULTS_ONLY?.split(',')
    .map((x) => x.trim())
    .filter(Boolean);
  for (const phase of o.phases ?? PHASES) {
    for (const fault of o.faults ?? FAULTS) {
      const na = notApplicable(kind, phase, fault);
      const picked = !only || only.some((x) => `${kind} ${phase} ${fault}`.includes(x));
      const skip = na ? `n/a: ${na}` : picked ? null : 'not in FERRY_FAULTS_ONLY';
      register(
        `${kind} × ${phase} × ${fault}${guest === 'bootblock' ? ' (bootblock: memory pattern)' : ''}`,
        { ...(skip ? { skip } : {}), timeout: 600_000 },
        async () => {
          await runCell(L, kind, phase, fault, guest);
        },
      );
    }
  }
}
