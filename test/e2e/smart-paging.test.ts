// Smart Paging end to end: a 3-host cluster lab whose other hosts have a --max-vm-memory too
// small for the HA probe VM; host-a dies and the fail-over restarts the VM with its RAM in a
// file of its paging folder, the guest keeps writing and every acked record is on its disk.
// A VM without Smart Paging is refused on such a host, with the figures, and nothing changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { waitSerial } from './lab.js';
import { sleep } from '../../src/util/exec.js';
import { parseSerial, verifyDiskImage } from '../../guest/records.js';
import { hostQemuPids } from '../../src/lab/lab.js';
import type { VmView } from '../../src/api/schemas.js';

test(
  'Smart Paging: an HA VM fails over to hosts whose --max-vm-memory is too small, its RAM in a file of ' +
    'its paging folder, every acked record intact; a VM without it is refused there, nothing changed',
  async (t) => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fsp-'));
    const lab = path.join(dir, 'lab');
    t.after(async () => {
      await ferry(['lab', 'down', '--dir', lab]);
      await fsp.rm(dir, { recursive: true, force: true });
    });
    await ferryOk(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster']);
    const folder = path.join(lab, 'shared', 'ha1');
    const vm = await ferryOk<VmView>(
      ['vm', 'new', 'ha1', '--host', 'host-a', '--guest', 'probe', '--ha', '--smart-paging'].concat([
        '--path',
        folder,
        '--start',
        '--json',
      ]),
      { lab },
    );
    assert.equal(vm.smartPaging, true);
    assert.equal(vm.memoryBacking, 'ram');
    for (const h of ['host-b', 'host-c']) await ferryOk(['host', 'set', h, '--max-vm-memory', '64'], { lab });
    const shown = await ferry(['host', 'show', 'host-b'], { lab });
    assert.match(shown.stdout, /max vm memory\s+64(\.0)? MiB/);

    // Refusal: a VM without Smart Paging does not start on host-b; it stays stopped, no file made.
    const plainDir = path.join(lab, 'shared', 'plain');
    await ferryOk(['vm', 'new', 'plain', '--host', 'host-b', '--guest', 'probe', '--path', plainDir], { lab });
    const refused = await ferry(['vm', 'start', 'plain'], { lab });
    assert.notEqual(refused.code, 0);
    assert.match(
      refused.stderr,
      /Cannot start VM 'plain': host 'host-b' has \d+ MiB for VMs, VM needs 256 MiB; raise --max-vm-memory/,
    );
    assert.doesNotMatch(refused.stderr, /\n\s+at /, 'no stack trace');
    assert.equal((await ferryOk<VmView>(['vm', 'show', 'plain', '--json'], { lab })).state, 'stopped');
    assert.deepEqual(
      (await fsp.readdir(plainDir)).filter((f) => f.endsWith('.smartpaging')),
      [],
    );

    const logOf = (h: string): string => path.join(lab, 'hosts', h, 'data', 'run', vm.id, 'serial.log');
    await waitSerial(logOf('host-a'), { acks: 10, lab, vm: vm.name, host: 'host-a' });
    await ferryOk(['lab', 'kill', 'host-a', '--dir', lab]);
    const ackA = parseSerial(await fsp.readFile(logOf('host-a'), 'utf8')).highestAck ?? 0;
    assert.ok(ackA > 0);
    const t0 = Date.now();
    let where = '';
    let pid = 0;
    while (!where && Date.now() - t0 < 30_000) {
      for (const h of ['host-b', 'host-c']) {
        const pids = await hostQemuPids(path.join(lab, 'hosts', h, 'data'));
        if (pids.length) [where, pid] = [h, pids[0]!];
      }
      if (!where) await sleep(200);
    }
    assert.ok(where, 'the HA VM was restarted on another node');
    let s = parseSerial('');
    while (Date.now() - t0 < 90_000 && s.writerStart === null) {
      await sleep(200);
      s = parseSerial(await fsp.readFile(logOf(where), 'utf8').catch(() => ''));
    }
    process.stderr.write(`smart paging: host-a killed → writer on ${where} after ${Date.now() - t0} ms\n`);
    assert.ok((s.writerStart ?? 0) > ackA, 'the writer continues after every record acknowledged on host-a');

    const v = await ferryOk<VmView>(['vm', 'show', 'ha1', '--json'], { lab });
    assert.equal(v.host, where);
    assert.equal(v.state, 'running');
    assert.equal(v.memoryBacking, 'paging-file');
    const file = v.pagingFile ?? '';
    assert.equal(path.dirname(file), folder, 'the paging file is in the paging folder');
    assert.ok(fs.readFileSync(`/proc/${pid}/maps`, 'utf8').includes(file), "QEMU's RAM is mapped from the file");
    const text = await ferry(['vm', 'show', 'ha1'], { lab });
    assert.match(text.stdout, /memory backing\s+Smart Paging file /);

    // More records on the new node, then a stop: every acked record on the disk, the file gone.
    const more = s.highestAck ?? 0;
    for (let i = 0; i < 100 && (parseSerial(await fsp.readFile(logOf(where), 'utf8')).highestAck ?? 0) < more + 5; i++)
      await sleep(200);
    await ferryOk(['vm', 'stop', 'ha1'], { lab });
    const ack = Math.max(ackA, parseSerial(await fsp.readFile(logOf(where), 'utf8')).highestAck ?? 0);
    assert.ok(ack > ackA, 'the guest kept running from the paging file');
    const report = await verifyDiskImage(vm.disks[0]!.path, { format: 'qcow2', highestAck: ack });
    assert.equal(report.ok, true, report.problems.join('; '));
    for (let i = 0; i < 20 && fs.existsSync(file); i++) await sleep(100);
    assert.equal(fs.existsSync(file), false, 'the paging file is removed when the VM stops');
  },
);
