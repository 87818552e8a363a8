// A failure after a move switched to post-copy: the guest's memory is split between the hosts
// (QEMU's rule), so it is lost on both. What Ferry owes then: say so (E_POSTCOPY_LOST, the
// record), never resume the source, keep the VM registered on exactly one host, and let the
// administrator start it again from its disks there with the commands the message gives.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { useLab, hostData } from './lab.js';
import { hostQemuPids } from '../../src/lab/lab.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { sleep } from '../../src/util/exec.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

const L = useLab(2);

/** Waits (60 s at most) until `host`'s QEMU of `vm` runs the guest, polling its QMP every 20 ms. */
async function runsOn(host: string, vm: VmView): Promise<boolean> {
  const sock = path.join(hostData(L, host), 'run', vm.id, 'qmp-admin.sock');
  for (const end = Date.now() + 60_000; Date.now() < end;) {
    const qmp = fs.existsSync(sock)
      ? await QmpClient.connect(sock, { vm: vm.name, timeoutMs: 1000 }).catch(() => null)
      : null;
    if (!qmp) {
      await sleep(20);
      continue;
    }
    try {
      while (Date.now() < end) {
        if ((await qmp.execute('query-status', undefined, { timeoutMs: 1000 })).status === 'running') return true;
        await sleep(20);
      }
    } catch {
      /* that QEMU went away (an incoming one that failed): look again */
    } finally {
      qmp.close();
    }
  }
  return false;
}
const USERFAULTFD_SYSCTL = '/proc/sys/vm/unprivileged_userfaultfd';

test('the source dies after the switch to post-copy: E_POSTCOPY_LOST, one host keeps it, it starts again', async () => {
  const vm = await ferryOk<VmView>(
    [
      'vm',
      'new',
      'pl1',
      '--host',
      'host-a',
      '--guest',
      'bootblock',
      '--path',
      path.join(L.lab, 'shared', 'pl1'),
    ].concat(['--start', '--json']),
    { lab: L.lab },
  );
  const was = (await fsp.readFile(USERFAULTFD_SYSCTL, 'utf8')).trim();
  let r: MigrationRecord;
  let code: number;
  try {
    await fsp.writeFile(USERFAULTFD_SYSCTL, '1');
    // A link of 1 MiB/s: the pages left after the switch take long enough to cut it in the middle.
    const moving = ferry(
      ['move-vm', 'pl1', '--to', 'host-b', '--bandwidth', '1', '--max-downtime', '50', '--finish-within', '3'].concat([
        '--allow-postcopy',
        '--json',
      ]),
      { lab: L.lab, timeoutMs: 120_000 },
    );
    // Once the guest runs on host-b with its pages still coming, the source host's QEMU dies. Read
    // from host-b's QEMU itself: post-copy's remaining pages go at full speed (about a second
    // here), shorter than a CLI round trip. It runs only after the source asked host-b to run it.
    const seen = await runsOn('host-b', vm);
    assert.ok(seen, 'the move switched to post-copy and the guest ran on host-b');
    for (const pid of await hostQemuPids(hostData(L, 'host-a'))) process.kill(pid, 'SIGKILL');
    const res = await moving;
    code = res.code;
    r = JSON.parse(res.stdout) as MigrationRecord;
  } finally {
    await fsp.writeFile(USERFAULTFD_SYSCTL, was);
  }
  assert.equal(code, 1);
  assert.equal(r.state, 'failed');
  assert.equal(r.error?.code, 'E_POSTCOPY_LOST', JSON.stringify(r.error));
  assert.match(r.error.message, /lost on both hosts .* 'ferry vm stop pl1 --force', then 'ferry vm start pl1'/);
  assert.equal(r.postcopy?.lost, true);

  // Exactly one host has the VM, and nothing runs on the other.
  const all = await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab: L.lab });
  const where = all.filter((v) => v.name === 'pl1');
  assert.equal(where.length, 1, `registered on ${where.map((v) => v.host).join(', ')}`);
  const home = where[0]!.host;
  assert.equal(home, 'host-b', 'the guest ran there last: its disks are the current ones');
  assert.match(r.error.message, /It stays on 'host-b'/);
  const other = 'host-a';
  assert.deepEqual(await hostQemuPids(hostData(L, other)), [], `no QEMU left on ${other}`);

  // The message's way back: stop it at once, start it from its disks.
  await ferryOk(['vm', 'stop', 'pl1', '--force'], { lab: L.lab });
  const started = await ferryOk<VmView>(['vm', 'start', 'pl1', '--json'], { lab: L.lab });
  assert.equal(started.host, home);
  assert.equal(started.state, 'running');
  assert.equal((await hostQemuPids(hostData(L, home))).length, 1);
  assert.deepEqual(await hostQemuPids(hostData(L, other)), []);
  await ferryOk(['vm', 'stop', 'pl1', '--force'], { lab: L.lab });
  await ferryOk(['vm', 'rm', 'pl1'], { lab: L.lab });
});
