// Live migration with shared storage, through bin/ferry against a real 2-host lab.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { ferry, ferryOk } from './cli.js';
import { readRequestLog, requestLogEnv } from './request-log.js';
import { REPO_ROOT } from '../../guest/paths.js';
import { useLab, hostData, serialLog, waitProbe, assertHeartbeatsContinue, waitMigration } from './lab.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { verifyGuestMemory } from '../../guest/bootblock.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { hostQemuPids } from '../../src/lab/lab.js';
import { sleep } from '../../src/util/exec.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord, CompareReport, Prediction } from '../../src/migration/schemas.js';

const L = useLab(2, { vmsPerTest: true });
const show = (name: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });
const size = (f: string): number => fs.statSync(f).size;

/** `vm new NAME --host host-a --guest GUEST [EXTRA…] --path <shared>/NAME --start`. */
const newOnA = (name: string, guest: 'probe' | 'bootblock', extra: string[] = []): Promise<VmView> =>
  ferryOk<VmView>(
    [
      'vm',
      'new',
      name,
      '--host',
      'host-a',
      '--guest',
      guest,
      ...extra,
      '--path',
      path.join(L.lab, 'shared', name),
      '--start',
      '--json',
    ],
    { lab: L.lab },
  );

const waitState = (id: string, states: string[], timeoutMs = 60_000): Promise<MigrationRecord> =>
  waitMigration(L, id, states, timeoutMs);

/** Nothing of the VM left on a host: no QEMU, not registered. */
async function assertGoneFrom(host: string, vm: VmView): Promise<void> {
  assert.deepEqual(await hostQemuPids(hostData(L, host)), [], `no QEMU left on ${host}`);
  const there = await ferryOk<VmView[]>(['vm', 'list', '--host', host, '--json'], { lab: L.lab });
  assert.ok(!there.some((v) => v.name === vm.name), `${vm.name} not registered on ${host}`);
}

test('a probe VM on the shared pool moves A→B→A: heartbeat continuous, every acked record intact', async () => {
  const vm = await newOnA('web1', 'probe');
  await waitProbe(L, vm, 30);
  const logA = serialLog(L, 'host-a', vm.id);
  const logB = serialLog(L, 'host-b', vm.id);

  // The first move's memory over 2 TLS streams (QEMU's multifd, host-a's setting), the way back over one.
  await ferryOk(['host', 'set', 'host-a', '--memory-streams', '2'], { lab: L.lab });
  const there = await ferryOk<MigrationRecord>(['move-vm', 'web1', '--to', 'host-b', '--json'], { lab: L.lab });
  await ferryOk(['host', 'set', 'host-a', '--memory-streams', '1'], { lab: L.lab });
  assert.equal(there.state, 'completed', JSON.stringify(there.error));
  assert.equal(there.kind, 'live');
  assert.equal(there.progress, 1);
  assert.ok(
    there.downtimeMs !== null && there.downtimeMs >= 0 && there.downtimeMs < 1000,
    `downtime ${there.downtimeMs}`,
  );
  assert.ok(there.bytesTransferred > 0 && there.totalMs! > 0);
  // What the downtime was spent on: QEMU's last pass and the device state (never nothing).
  assert.ok(
    typeof there.pausedBytes === 'number' && there.pausedBytes > 0 && there.pausedBytes < there.bytesTransferred,
    `sent paused: ${there.pausedBytes}`,
  );
  const streams = there.events.map((e) => e.message).find((m) => m.includes('multifd streams')) ?? '';
  assert.match(streams, /^memory: [\d.]+ MiB sent, [\d.]+ MiB of it over the 2 multifd streams$/);
  assert.ok(Number(/, ([\d.]+) MiB of it/.exec(streams)?.[1]) > 0, streams);
  const atB = await show('web1');
  assert.equal(atB.host, 'host-b');
  assert.equal(atB.state, 'running');
  const endA1 = size(logA);
  await waitProbe(L, atB, 20);

  const back = await ferryOk<MigrationRecord>(['move-vm', 'web1', '--to', 'host-a', '--json'], { lab: L.lab });
  assert.equal(back.state, 'completed', JSON.stringify(back.error));
  assert.ok(!back.events.some((e) => e.message.includes('multifd')), 'one stream by default');
  // Where its time went: every step on both hosts, timed, and `migration show` prints them.
  const steps = (back.steps ?? []).map((x) => `${x.on} ${x.name}`);
  for (const want of ['source compare', 'source prepare', 'destination checks', 'destination qemu'])
    assert.ok(steps.includes(want), `${want} in ${steps.join(', ')}`);
  for (const want of ['destination listen', 'source migrate', 'source switchover', 'destination finish-run'])
    assert.ok(steps.includes(want), `${want} in ${steps.join(', ')}`);
  for (const x of back.steps ?? []) assert.ok(x.ms >= 0 && x.atMs >= 0 && !x.failed, JSON.stringify(x));
  const qemu = back.steps?.find((x) => x.name === 'qemu');
  const prepare = back.steps?.find((x) => x.name === 'prepare');
  assert.ok(qemu && prepare && qemu.ms <= prepare.ms, 'the destination starts its QEMU inside the Prepare');
  const shown = await ferryOk<string>(['migration', 'show', back.id], { lab: L.lab });
  assert.match(shown, /^steps \(ms after the request, host, step, time\):$/m);
  assert.match(shown, /^ +\+[\d.]+ +host-a +qemu +[\d.]+ ms$/m);
  assert.equal((await show('web1')).host, 'host-a');
  const endB = size(logB);
  await sleep(1000);

  // The console, stitched in the order the VM ran: A, then B, then A again.
  const a = await fsp.readFile(logA, 'utf8');
  const stitched = a.slice(0, endA1) + (await fsp.readFile(logB, 'utf8')).slice(0, endB) + a.slice(endA1);
  const c = assertHeartbeatsContinue([stitched], [], 'no heartbeat lost across two moves');
  assert.ok(c.total > 60);
  const hbs = parseSerial(stitched).heartbeats;
  for (let i = 1; i < hbs.length; i++)
    assert.equal(hbs[i]!.seq, hbs[i - 1]!.seq + 1, 'the sequence never resets or jumps');

  const history = await ferryOk<MigrationRecord[]>(['migration', 'list', '--all', '--json'], { lab: L.lab });
  assert.deepEqual(
    history.filter((r) => r.vm === 'web1').map((r) => `${r.source}>${r.destination}:${r.state}`),
    ['host-a>host-b:completed', 'host-b>host-a:completed'],
  );

  await ferryOk(['vm', 'stop', 'web1'], { lab: L.lab });
  const ack = parseSerial(stitched + (await fsp.readFile(logA, 'utf8')).slice(a.length)).highestAck!;
  const report = await verifyDiskImage(vm.disks[0]!.path, { format: 'qcow2', highestAck: ack });
  assert.equal(report.ok, true, report.problems.join('; '));
  await assertGoneFrom('host-b', vm);
  await ferryOk(['vm', 'rm', 'web1'], { lab: L.lab });
});

test('a guest that restarts itself right after a move is reported: vm show, the event, the agent log', async () => {
  const vm = await newOnA('rb1', 'probe', ['--memory', '128M']);
  await waitProbe(L, vm, 10);
  const r = await ferryOk<MigrationRecord>(['move-vm', 'rb1', '--to', 'host-b', '--json'], { lab: L.lab });
  assert.equal(r.state, 'completed', JSON.stringify(r.error));
  const atB = await show('rb1');
  assert.ok(atB.arrival, 'vm show says where it came from');
  assert.equal(atB.arrival.from, 'host-a');
  assert.equal(atB.arrival.migration, r.id);
  assert.equal(atB.arrival.trouble, null, 'a guest that runs on has no trouble');

  // The guest resets itself as a crashing kernel with panic=N does: sysrq-b, from its own keyboard.
  const qmp = await QmpClient.connect(path.join(hostData(L, 'host-b'), 'run', vm.id, 'qmp-admin.sock'), { vm: 'rb1' });
  try {
    await qmp.execute('send-key', {
      keys: ['alt', 'sysrq', 'b'].map((k) => ({ type: 'qcode' as const, data: k })),
    });
  } finally {
    qmp.close();
  }
  let v = atB;
  for (let i = 0; i < 100 && !v.arrival?.trouble; i++) {
    await sleep(200);
    v = await show('rb1');
  }
  const t = v.arrival?.trouble;
  assert.equal(t?.what, 'reset', JSON.stringify(v.arrival));
  assert.ok(t.afterMs > 0 && t.afterMs < 60_000, `after ${t.afterMs} ms`);
  assert.match(v.arrival!.message, /rb1' restarted itself [\d.]+ s after arriving from 'host-a'/);
  const text = await ferryOk<string>(['vm', 'show', 'rb1'], { lab: L.lab });
  assert.match(text, /last arrival +VM 'rb1' restarted itself/);
  const log = await fsp.readFile(path.join(L.lab, 'hosts', 'host-b', 'agent.log'), 'utf8');
  assert.match(log, /"type":"vm.guest-trouble".*restarted itself/);
  await ferryOk(['vm', 'stop', 'rb1', '--force'], { lab: L.lab });
  await ferryOk(['vm', 'rm', 'rb1'], { lab: L.lab });
});

test('the bootblock memory pattern is intact on the destination', async () => {
  const vm = await newOnA('bb1', 'bootblock');
  await sleep(2000);
  const r = await ferryOk<MigrationRecord>(['move-vm', 'bb1', '--to', 'host-b', '--max-downtime', '5000', '--json'], {
    lab: L.lab,
  });
  assert.equal(r.state, 'completed', JSON.stringify(r.error));
  const qmp = await QmpClient.connect(path.join(hostData(L, 'host-b'), 'run', vm.id, 'qmp-admin.sock'), { vm: 'bb1' });
  try {
    // QEMU writes the dump: into its run folder, the one folder its user may write.
    const rep = await verifyGuestMemory(qmp, path.join(hostData(L, 'host-b'), 'run', vm.id, 'bb1.dump'));
    assert.equal(rep.ok, true, `bad pages: ${rep.badPages.slice(0, 10).join(',')}`);
  } finally {
    qmp.close();
  }
  await ferryOk(['vm', 'stop', 'bb1', '--force'], { lab: L.lab });
  await ferryOk(['vm', 'rm', 'bb1'], { lab: L.lab });
});

test('move-vm follows through the event stream (no polling); Ctrl-C cancels the move and exits 5', async () => {
  const vm = await newOnA('ev1', 'bootblock', ['--memory', '64M']);
  await sleep(1000);
  // A move of some seconds (32 MiB/s), followed to its end: its progress comes from the one
  // event stream; the migration record is never fetched (that was a GET every 300 ms).
  const logFile = path.join(L.dir, 'requests-ev1.json');
  const r = await ferry(['move-vm', 'ev1', '--to', 'host-b', '--bandwidth', '32', '--max-downtime', '5000', '--json'], {
    lab: L.lab,
    env: requestLogEnv(logFile),
  });
  assert.equal(r.code, 0, r.stderr);
  const rec = JSON.parse(r.stdout) as MigrationRecord;
  assert.equal(rec.state, 'completed', JSON.stringify(rec.error));
  assert.ok(rec.totalMs! > 1000, `the move lasted ${rec.totalMs} ms`);
  assert.match(r.stderr, /copying-memory +\d+%/, 'progress lines came from the events');
  const log = await readRequestLog(logFile);
  assert.deepEqual(
    log.requests.filter((q) => q.startsWith('GET /v1/events')),
    ['GET /v1/events'],
    log.requests.join(', '),
  );
  assert.deepEqual(
    log.requests.filter((q) => q.includes(`/v1/migrations/${rec.id}`)),
    [],
    log.requests.join(', '),
  );
  assert.ok(log.requests.length <= 6, `${log.requests.length} requests: ${log.requests.join(', ')}`);

  // Ctrl-C while it copies (back to A, slowly): the move is cancelled, the VM stays on B.
  const child = spawn(path.join(REPO_ROOT, 'bin', 'ferry'), ['move-vm', 'ev1', '--to', 'host-a', '--bandwidth', '1'], {
    env: { ...process.env, FERRY_LAB: L.lab },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  try {
    const until = Date.now() + 60_000;
    while (!/copying-memory/.test(err) && Date.now() < until) await sleep(100);
    assert.match(err, /copying-memory/, err);
    child.kill('SIGINT');
    const code = await Promise.race([exited, sleep(60_000).then(() => 'timeout' as const)]);
    assert.equal(code, 5, `exit ${code}: ${err}`);
  } finally {
    child.kill('SIGKILL');
  }
  assert.match(err, /Ctrl-C: cancelling the move of VM 'ev1'/);
  assert.match(out, /state +cancelled/);
  const after = await show('ev1');
  assert.equal(after.host, 'host-b');
  assert.equal(after.state, 'running');
  await assertGoneFrom('host-a', vm);
  await ferryOk(['vm', 'stop', 'ev1', '--force'], { lab: L.lab });
  await ferryOk(['vm', 'rm', 'ev1'], { lab: L.lab });
});

test('cancel during copying-memory: the VM keeps running on A, nothing is left on B', async () => {
  const vm = await newOnA('slow1', 'probe');
  await waitProbe(L, vm, 10);
  const id = (
    await ferryOk<string>(['move-vm', 'slow1', '--to', 'host-b', '--bandwidth', '2', '--no-wait'], { lab: L.lab })
  ).trim();
  const copying = await waitState(id, ['copying-memory']);
  assert.equal(copying.state, 'copying-memory');
  assert.equal((await show('slow1')).state, 'migrating');
  await sleep(1000);
  const mid = await ferryOk<MigrationRecord>(['migration', 'show', id, '--json'], { lab: L.lab });
  assert.ok(mid.progress > 0 && mid.progress < 1);
  assert.ok(mid.rate.transferBps > 0);
  const cancelled = await ferryOk<MigrationRecord>(['migration', 'cancel', id, '--json'], { lab: L.lab });
  assert.equal(cancelled.state, 'cancelled');
  assert.equal(cancelled.error?.code, 'E_CANCELLED');
  const after = await show('slow1');
  assert.equal(after.host, 'host-a');
  assert.equal(after.state, 'running');
  await assertGoneFrom('host-b', vm);
  assert.equal(fs.existsSync(path.join(hostData(L, 'host-b'), 'run', vm.id)), false, "B's run folder removed");
  const before = parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8')).heartbeats.length;
  await sleep(1500);
  assert.ok(
    parseSerial(await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8')).heartbeats.length > before + 20,
    'still running on A',
  );
  const again = await ferry(['migration', 'cancel', id], { lab: L.lab });
  assert.equal(again.code, 1);
  assert.match(again.stderr, /is cancelled/);

  // The destination QEMU dies mid-copy: same outcome, and the record says why.
  const id2 = (
    await ferryOk<string>(['move-vm', 'slow1', '--to', 'host-b', '--bandwidth', '2', '--no-wait'], { lab: L.lab })
  ).trim();
  await waitState(id2, ['copying-memory']);
  await sleep(500);
  const [destPid] = await hostQemuPids(hostData(L, 'host-b'));
  assert.ok(destPid, 'the destination QEMU runs');
  process.kill(destPid, 'SIGKILL');
  const failed = await waitState(id2, ['failed', 'completed', 'cancelled']);
  assert.equal(failed.state, 'failed');
  assert.match(failed.error!.message, /stream failed|Broken pipe|reset|closed/i);
  const after2 = await show('slow1');
  assert.equal(after2.host, 'host-a');
  assert.equal(after2.state, 'running');
  await assertGoneFrom('host-b', vm);

  // And a retry succeeds.
  const ok = await ferryOk<MigrationRecord>(['move-vm', 'slow1', '--to', 'host-b', '--json'], { lab: L.lab });
  assert.equal(ok.state, 'completed');
  await ferryOk(['vm', 'stop', 'slow1'], { lab: L.lab });
  const logs = [
    await fsp.readFile(serialLog(L, 'host-a', vm.id), 'utf8'),
    await fsp.readFile(serialLog(L, 'host-b', vm.id), 'utf8'),
  ];
  const ack = Math.max(...logs.map((t) => parseSerial(t).highestAck ?? 0));
  assert.equal((await verifyDiskImage(vm.disks[0]!.path, { format: 'qcow2', highestAck: ack })).ok, true);
  await ferryOk(['vm', 'rm', 'slow1'], { lab: L.lab });
});

test('three moves with max-live 2: one waits in the queue, then all complete', async () => {
  const names = ['q1', 'q2', 'q3'];
  for (const n of names)
    await ferryOk(
      [
        'vm',
        'new',
        n,
        '--host',
        'host-a',
        '--guest',
        'probe',
        '--memory',
        '128M',
        '--probe-no-writer',
        '--path',
        path.join(L.lab, 'shared', n),
        '--start',
      ],
      { lab: L.lab },
    );
  await sleep(3000);
  const ids: string[] = [];
  // The first two copy slowly (an idle 128 MiB guest sends ~30 MiB: ~15 s at 2 MiB/s), so they
  // still run when the third is asked for, however long a loaded machine takes to start the CLI.
  for (const n of names)
    ids.push(
      (
        await ferryOk<string>(['move-vm', n, '--to', 'host-b', '--bandwidth', n === 'q3' ? '8' : '2', '--no-wait'], {
          lab: L.lab,
        })
      ).trim(),
    );
  const list = await ferryOk<MigrationRecord[]>(['migration', 'list', '--all', '--json'], { lab: L.lab });
  const queued = list.filter((r) => r.state === 'queued');
  assert.equal(queued.length, 1, `states: ${list.map((r) => `${r.vm}:${r.state} ${r.error?.code ?? ''}`).join(', ')}`);
  assert.equal(queued[0]!.queuePosition, 1);
  assert.equal(queued[0]!.vm, 'q3');
  for (const id of ids) {
    const r = await waitState(id, ['completed', 'failed', 'cancelled'], 120_000);
    assert.equal(r.state, 'completed', JSON.stringify(r.error));
  }
  for (const n of names) {
    assert.equal((await show(n)).host, 'host-b');
    await ferryOk(['vm', 'stop', n, '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', n], { lab: L.lab });
  }
});

test(
  'a guest dirtying faster than --bandwidth: the ladder completes it, or a too-small ' +
    '--finish-within aborts cleanly',
  async () => {
    const vm = await newOnA('hot1', 'bootblock');
    await sleep(1500);
    const fail = await ferry(
      [
        'move-vm',
        'hot1',
        '--to',
        'host-b',
        '--bandwidth',
        '16',
        '--max-downtime',
        '50',
        '--finish-within',
        '6',
        '--json',
      ],
      { lab: L.lab, timeoutMs: 60_000 },
    );
    assert.equal(fail.code, 1);
    const fr = JSON.parse(fail.stdout) as MigrationRecord;
    assert.equal(fr.state, 'failed');
    assert.equal(fr.error?.code, 'E_NOT_CONVERGING');
    assert.match(
      fr.error.message,
      /dirties memory at [\d.]+ MiB\/s against [\d.]+ MiB\/s of bandwidth.*--finish-within/,
    );
    assert.ok(fr.totalMs! < 30_000, 'aborted near its budget, never hangs');
    assert.equal((await show('hot1')).host, 'host-a');
    assert.equal((await show('hot1')).state, 'running');
    await assertGoneFrom('host-b', vm);

    const ok = await ferry(
      [
        'move-vm',
        'hot1',
        '--to',
        'host-b',
        '--bandwidth',
        '16',
        '--max-downtime',
        '20000',
        '--finish-within',
        '90',
        '--json',
      ],
      { lab: L.lab, timeoutMs: 150_000 },
    );
    const okr = JSON.parse(ok.stdout) as MigrationRecord;
    assert.equal(okr.state, 'completed', JSON.stringify(okr.error));
    assert.ok(
      okr.events.some((e) => /downtime limit raised/.test(e.message)),
      'the ladder raised the downtime limit',
    );
    const qmp = await QmpClient.connect(path.join(hostData(L, 'host-b'), 'run', vm.id, 'qmp-admin.sock'), {
      vm: 'hot1',
    });
    try {
      assert.equal(
        (await verifyGuestMemory(qmp, path.join(hostData(L, 'host-b'), 'run', vm.id, 'hot1.dump'))).ok,
        true,
      );
    } finally {
      qmp.close();
    }
    await ferryOk(['vm', 'stop', 'hot1', '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', 'hot1'], { lab: L.lab });
  },
);

const USERFAULTFD_SYSCTL = '/proc/sys/vm/unprivileged_userfaultfd';

test(
  '--allow-postcopy: a guest dirtying faster than --bandwidth switches to post-copy and runs on the ' +
    'destination, memory intact, source QEMU gone; a host whose QEMU cannot do post-copy refuses cleanly',
  async (t) => {
    const vm = await newOnA('pc1', 'bootblock');
    const move = [
      'move-vm',
      'pc1',
      '--to',
      'host-b',
      '--bandwidth',
      '8',
      '--max-downtime',
      '50',
      '--finish-within',
      '5',
      '--allow-postcopy',
      '--json',
    ];
    // QEMU runs as ferry-qemu: QEMU 7.2 gets userfaultfd only with this (global) sysctl.
    const was = (await fsp.readFile(USERFAULTFD_SYSCTL, 'utf8')).trim();
    try {
      await fsp.writeFile(USERFAULTFD_SYSCTL, '0');
      const no = await ferry(move, { lab: L.lab, timeoutMs: 60_000 });
      assert.equal(no.code, 1);
      const nr = JSON.parse(no.stdout) as MigrationRecord;
      assert.equal(nr.error?.code, 'E_POSTCOPY_UNSUPPORTED', JSON.stringify(nr.error));
      assert.match(nr.error.message, /vm\.unprivileged_userfaultfd=1/);
      assert.equal((await show('pc1')).host, 'host-a');
      assert.equal((await show('pc1')).state, 'running');
      await assertGoneFrom('host-b', vm);

      await fsp.writeFile(USERFAULTFD_SYSCTL, '1');
      const res = await ferry(move, { lab: L.lab, timeoutMs: 90_000 });
      const r = JSON.parse(res.stdout) as MigrationRecord;
      assert.equal(r.state, 'completed', JSON.stringify(r.error));
      t.diagnostic(`post-copy: ${JSON.stringify(r.postcopy)} total ${r.totalMs} ms`);
      assert.ok(r.postcopy, 'the record shows the switch to post-copy');
      assert.equal(r.postcopy.lost, false);
      assert.ok(r.postcopy.afterMs >= 5000, 'switched once the --finish-within budget was spent');
      assert.ok(r.postcopy.guestPauseMs !== null && r.postcopy.guestPauseMs < 10_000, 'paused briefly in all');
      assert.ok(r.postcopy.downtimeMs !== null && r.postcopy.downtimeMs <= r.postcopy.guestPauseMs);
      assert.ok(r.events.some((e) => /switching to post-copy/.test(e.message)));
      assert.ok(r.events.some((e) => /post-copy: the guest moves to the destination/.test(e.message)));
      assert.ok(r.events.some((e) => /the guest runs on host-b/.test(e.message)));
    } finally {
      await fsp.writeFile(USERFAULTFD_SYSCTL, was);
    }
    const v = await show('pc1');
    assert.equal(v.host, 'host-b');
    assert.equal(v.state, 'running');
    assert.deepEqual(await hostQemuPids(hostData(L, 'host-a')), [], 'the source QEMU is gone');
    const qmp = await QmpClient.connect(path.join(hostData(L, 'host-b'), 'run', vm.id, 'qmp-admin.sock'), {
      vm: 'pc1',
    });
    try {
      assert.equal((await qmp.execute('query-status')).running, true, 'the guest runs on the destination');
      const rep = await verifyGuestMemory(qmp, path.join(hostData(L, 'host-b'), 'run', vm.id, 'pc1.dump'));
      assert.equal(rep.ok, true, `bad pages: ${rep.badPages.slice(0, 10).join(',')}`);
    } finally {
      qmp.close();
    }
    await ferryOk(['vm', 'stop', 'pc1', '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', 'pc1'], { lab: L.lab });
  },
);

test('compare-vm: each incompatibility from a real setup, and move-vm refuses with exit 3', async () => {
  const cmp = async (vm: string, to = 'host-b'): Promise<CompareReport> => {
    const r = await ferry(['compare-vm', vm, '--to', to, '--json'], { lab: L.lab });
    const rep = JSON.parse(r.stdout) as CompareReport;
    assert.equal(r.code, rep.compatible ? 0 : 3);
    return rep;
  };
  const codes = (rep: CompareReport): string[] => [...new Set(rep.incompatibilities.map((i) => i.code))];

  // Disks on host-a's local pool are not visible from host-b.
  await ferryOk(['vm', 'new', 'loc1', '--host', 'host-a', '--guest', 'bootblock'], { lab: L.lab });
  assert.deepEqual(codes(await cmp('loc1')), ['E_STORAGE_NOT_SHARED']);
  const refused = await ferry(['move-vm', 'loc1', '--to', 'host-b'], { lab: L.lab });
  assert.equal(refused.code, 3);
  assert.match(refused.stderr, /E_STORAGE_NOT_SHARED/);
  assert.deepEqual(codes(await cmp('loc1', 'host-a')), ['E_SAME_HOST']);

  const sh = (n: string): string => path.join(L.lab, 'shared', n);
  await ferryOk(['switch', 'new', 'prod', '--host', 'host-a', '--user'], { lab: L.lab });
  await ferryOk(
    ['vm', 'new', 'sw1', '--host', 'host-a', '--guest', 'bootblock', '--switch', 'prod', '--path', sh('sw1')],
    { lab: L.lab },
  );
  const sw = await cmp('sw1');
  assert.deepEqual(codes(sw), ['E_SWITCH_MISSING']);
  assert.match(sw.incompatibilities[0]!.message, /ferry switch new prod --host host-b/);

  await ferryOk(
    ['vm', 'new', 'cpu1', '--host', 'host-a', '--guest', 'bootblock', '--cpu', 'Skylake-Server', '--path', sh('cpu1')],
    { lab: L.lab },
  );
  assert.ok(codes(await cmp('cpu1')).includes('E_CPU_FEATURES'));
  const compat = await ferry(
    [
      'vm',
      'new',
      'cpu2',
      '--host',
      'host-a',
      '--guest',
      'bootblock',
      '--cpu',
      'compat',
      '--path',
      sh('cpu2'),
      '--json',
    ],
    { lab: L.lab },
  );
  assert.equal(compat.code, 0, compat.stderr);
  assert.notEqual((JSON.parse(compat.stdout) as VmView).cpuModel, 'compat');
  assert.deepEqual(codes(await cmp('cpu2')), []);

  // Memory: a big VM already assigned on host-b leaves too little for another.
  const free = (await ferryOk<{ memory: { freeBytes: number } }>(['host', 'show', 'host-b', '--json'], { lab: L.lab }))
    .memory.freeBytes;
  // 60 % each: still too much for two when other tests free some memory meanwhile.
  const bigMiB = Math.floor((free * 0.6) / 1024 / 1024);
  await ferryOk(
    [
      'vm',
      'new',
      'big-b',
      '--host',
      'host-b',
      '--guest',
      'bootblock',
      '--memory',
      `${bigMiB}M`,
      '--path',
      sh('big-b'),
      '--start',
    ],
    { lab: L.lab },
  );
  await ferryOk(
    [
      'vm',
      'new',
      'big-a',
      '--host',
      'host-a',
      '--guest',
      'bootblock',
      '--memory',
      `${bigMiB}M`,
      '--path',
      sh('big-a'),
      '--start',
    ],
    { lab: L.lab },
  );
  assert.deepEqual(codes(await cmp('big-a')), ['E_MEMORY']);
  for (const n of ['big-a', 'big-b']) {
    await ferryOk(['vm', 'stop', n, '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', n], { lab: L.lab });
  }

  // Name taken on the destination.
  await ferryOk(['vm', 'new', 'dupe', '--host', 'host-a', '--guest', 'bootblock', '--path', sh('dupe')], {
    lab: L.lab,
  });
  const dupB = await ferry(['vm', 'new', 'dupe', '--host', 'host-b', '--guest', 'bootblock', '--path', sh('dupe-b')], {
    lab: L.lab,
  });
  assert.equal(dupB.code, 0, dupB.stderr);
  assert.ok(codes(await cmp('dupe')).includes('E_NAME_EXISTS'));

  // Destination refuses migrations; then the shared pool is not granted to it.
  await ferryOk(['host', 'set', 'host-b', '--migrations', 'off'], { lab: L.lab });
  assert.ok(codes(await cmp('cpu2')).includes('E_MIGRATION_DISABLED'));
  await ferryOk(['host', 'set', 'host-b', '--migrations', 'on'], { lab: L.lab });
  await ferryOk(['pool', 'revoke', 'shared', '--host', 'host-b'], { lab: L.lab });
  const ng = await cmp('cpu2');
  assert.ok(codes(ng).includes('E_POOL_NOT_GRANTED'));
  assert.match(
    ng.incompatibilities.find((i) => i.code === 'E_POOL_NOT_GRANTED')!.message,
    /ferry pool grant shared --host host-b/,
  );
  await ferryOk(['pool', 'grant', 'shared', '--host', 'host-b'], { lab: L.lab });

  // A host of another domain: its certificate is not from our CA.
  const other = path.join(L.dir, 'other');
  const st = await ferryOk<{ hosts: Array<{ endpoint: string }> }>([
    'lab',
    'up',
    '--dir',
    other,
    '--hosts',
    '1',
    '--json',
  ]);
  try {
    const ctx = path.join(L.dir, 'ctx.json');
    const d = path.join(L.lab, 'domain');
    await fsp.writeFile(
      ctx,
      JSON.stringify({
        ca: path.join(d, 'ca.crt'),
        cert: path.join(d, 'admins', 'admin.crt'),
        key: path.join(d, 'admins', 'admin.key'),
        hosts: [
          { name: 'host-a', endpoint: L.status.hosts[0]!.endpoint },
          { name: 'host-a2', endpoint: st.hosts[0]!.endpoint },
        ],
      }),
    );
    const r = await ferry(['compare-vm', 'cpu2', '--to', 'host-a2', '--json', '--context', ctx]);
    assert.equal(r.code, 3);
    assert.deepEqual(codes(JSON.parse(r.stdout) as CompareReport), ['E_DOMAIN']);
  } finally {
    await ferry(['lab', 'down', '--dir', other]);
  }
  for (const n of ['loc1', 'sw1', 'cpu1', 'cpu2', 'dupe', 'dupe']) await ferryOk(['vm', 'rm', n], { lab: L.lab });
});

test('a stopped VM moves by registration only', async () => {
  await ferryOk(
    ['vm', 'new', 'off1', '--host', 'host-a', '--guest', 'bootblock', '--path', path.join(L.lab, 'shared', 'off1')],
    { lab: L.lab },
  );
  const r = await ferryOk<MigrationRecord>(['move-vm', 'off1', '--to', 'host-b', '--json'], { lab: L.lab });
  assert.equal(r.state, 'completed');
  assert.equal(r.kind, 'offline');
  const v = await show('off1');
  assert.equal(v.host, 'host-b');
  assert.equal(v.state, 'stopped');
  assert.equal((await ferryOk<VmView>(['vm', 'start', 'off1', '--json'], { lab: L.lab })).state, 'running');
  await ferryOk(['vm', 'stop', 'off1', '--force'], { lab: L.lab });
  await ferryOk(['vm', 'rm', 'off1'], { lab: L.lab });
});

test('compare-vm --predict: an idle and a dirtying guest, a refusal when stopped, the record keeps it', async () => {
  const vmNew = (name: string, guest: string, start: boolean) =>
    ferryOk<VmView>(
      [
        'vm',
        'new',
        name,
        '--host',
        'host-a',
        '--guest',
        guest,
        '--path',
        path.join(L.lab, 'shared', name),
        ...(start ? ['--start'] : []),
        '--json',
      ],
      { lab: L.lab },
    );
  const predict = async (name: string, to: string, extra: string[] = []): Promise<Prediction> => {
    const rep = await ferryOk<CompareReport>(['compare-vm', name, '--to', to, '--predict', ...extra, '--json'], {
      lab: L.lab,
    });
    assert.equal(rep.compatible, true, JSON.stringify(rep.incompatibilities));
    assert.ok(rep.prediction, 'a prediction in the report');
    return rep.prediction;
  };
  const idle = await vmNew('pr1', 'probe', false);
  const stopped = await ferry(['compare-vm', 'pr1', '--to', 'host-b', '--predict'], { lab: L.lab });
  assert.notEqual(stopped.code, 0);
  assert.match(stopped.stderr, /Cannot predict the move of VM 'pr1': it is not running .*start it/);
  assert.doesNotMatch(stopped.stderr, /\n\s+at /, 'no stack trace');
  await ferryOk(['vm', 'start', 'pr1'], { lab: L.lab });
  await vmNew('pb1', 'bootblock', true);
  await waitProbe(L, { ...idle, host: 'host-a' }, 10);

  const pi = await predict('pr1', 'host-b');
  assert.equal(pi.memoryMiB, idle.memoryMiB);
  assert.ok(pi.dirtyRateMiBps >= 0 && pi.dirtyRateMiBps < 16, `idle dirties ${pi.dirtyRateMiBps} MiB/s`);
  assert.equal(pi.converges, true);
  assert.equal(pi.step, 'pre-copy');
  assert.ok(pi.linkMiBps > 0 && pi.totalMs > 0 && pi.totalMs < 30_000, JSON.stringify(pi));
  // QEMU's limit bounds what is left when it pauses the guest; the switch-over's own cost comes on top.
  assert.ok(pi.downtimeMs !== null && pi.downtimeMs <= pi.downtimeLimitMs + (pi.switchMs ?? 0), JSON.stringify(pi));
  // The first pass is priced by the share of its pages that hold data, sampled from its RAM.
  assert.equal(pi.wireShareFrom, 'sampled');
  assert.ok(pi.wireShare !== undefined && pi.wireShare > 0 && pi.wireShare <= 1, `wire share ${pi.wireShare}`);

  // The bootblock rewrites a byte of every page of 99 MiB in a tight loop.
  const pb = await predict('pb1', 'host-b', ['--max-downtime', '5000']);
  assert.ok(pb.dirtyRateMiBps > 20 && pb.dirtyRateMiBps > pi.dirtyRateMiBps * 4, `busy ${pb.dirtyRateMiBps} MiB/s`);
  assert.equal(pb.maxDowntimeMs, 5000);
  // It rewrites the same 99 MiB: a second sample over 2 s finds no more of it dirtied than the
  // first when the loop covers it within ~1.3 s (page sampling's error: ±20 %).
  if (pb.dirtyRateMiBps >= 80) assert.ok(pb.workingSetMiB !== undefined, `no working set: ${JSON.stringify(pb)}`);
  if (pb.workingSetMiB !== undefined)
    assert.ok(pb.workingSetMiB > 60 && pb.workingSetMiB < 130, `working set ${pb.workingSetMiB} MiB`);
  assert.ok(pb.totalMs >= pi.totalMs, 'a dirtying guest of the same link takes longer');

  const ri = await ferryOk<MigrationRecord>(['move-vm', 'pr1', '--to', 'host-b', '--json'], { lab: L.lab });
  assert.equal(ri.state, 'completed', JSON.stringify(ri.error));
  assert.deepEqual(ri.prediction, pi, 'the record carries the prediction beside the outcome');
  // An idle guest's move is its first pass and little more: the sampled share is what QEMU sent
  // (the resident bound alone said 1.0 here once khugepaged had filled the guest's huge pages).
  const sent = ri.bytesTransferred / (idle.memoryMiB * 1024 * 1024);
  assert.ok(Math.abs((pi.wireShare ?? 1) - sent) < 0.12, `wire share predicted ${pi.wireShare}, sent ${sent}`);
  // `migration show` sets the prediction against what the move did.
  const shown = await ferryOk<string>(['migration', 'show', ri.id], { lab: L.lab });
  assert.match(shown, /^predicted +converges by plain pre-copy: ~\d+\.\d s/m);
  assert.match(
    shown,
    /^outcome +took \d+\.\d s, predicted ~\d+\.\d s \([+−±]\d+ %\), downtime \d+ ms, predicted ~\d+ ms, (pre-copy as predicted|reached \S+ where pre-copy was predicted)$/m,
  );
  const rb = await ferryOk<MigrationRecord>(['move-vm', 'pb1', '--to', 'host-b', '--max-downtime', '5000', '--json'], {
    lab: L.lab,
  });
  assert.equal(rb.state, 'completed', JSON.stringify(rb.error));
  assert.deepEqual(rb.prediction, pb);

  // Back: the link is now learnt from the moves above (host-b's own history has none to host-a).
  const text = await ferryOk<string>(['compare-vm', 'pr1', '--to', 'host-a', '--predict'], { lab: L.lab });
  assert.match(text, /^VM pr1 can move to host-a\n {2}prediction +\S.*\n {2}total +~\d+\.\d s\n/);
  assert.match(text, /converges +yes at --max-downtime \d+ ms \(step: pre-copy\)/);
  assert.match(text, /first pass +~\d+ of \d+ MiB on the wire \(pages of its RAM sampled for data/);
  const plain = await ferry(['compare-vm', 'pr1', '--to', 'host-a', '--max-downtime', '100'], { lab: L.lab });
  assert.notEqual(plain.code, 0);
  assert.match(plain.stderr, /without --predict/);

  for (const n of ['pr1', 'pb1']) {
    await ferryOk(['vm', 'stop', n, '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', n], { lab: L.lab });
  }
});
