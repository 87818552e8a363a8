// Smart Paging (pure logic): the room a host has for VMs, the decision between RAM, a paging
// file and a refusal, the QEMU argv of a file-backed VM, placement's last resort.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseVmSpec, newVmId } from '../../src/vm/spec.js';
import { buildArgv } from '../../src/qemu/argv.js';
import { decideBacking, noRoomError, roomForVms, VM_MEMORY_RESERVE_MIB } from '../../src/vm/memory-backing.js';
import { place, type PlacementNode } from '../../src/cluster/placement.js';

const R = VM_MEMORY_RESERVE_MIB;

test('smart paging: room is free memory minus the reserve, capped by --max-vm-memory minus RAM-backed VMs', () => {
  assert.equal(roomForVms({ freeMiB: 4096, maxVmMiB: null, vmMiB: 0 }), 4096 - R);
  assert.equal(roomForVms({ freeMiB: 4096, maxVmMiB: 1024, vmMiB: 256 }), 768);
  assert.equal(roomForVms({ freeMiB: 100, maxVmMiB: null, vmMiB: 0 }), 0);
  assert.equal(roomForVms({ freeMiB: 4096, maxVmMiB: 64, vmMiB: 512 }), 0);
});

test('smart paging: RAM when it fits, a paging file when allowed, else a refusal that says the figures', () => {
  assert.deepEqual(decideBacking(256, 256, false), { backing: 'ram' });
  assert.deepEqual(decideBacking(256, 256, true), { backing: 'ram' });
  assert.deepEqual(decideBacking(256, 64, true), { backing: 'paging-file' });
  assert.deepEqual(decideBacking(256, 64, false), { backing: null, roomMiB: 64 });
  const e = noRoomError('start', 'web1', 'host-b', 64, 256);
  assert.equal(e.code, 'E_VM_MEMORY');
  assert.match(e.message, /^Cannot start VM 'web1': host 'host-b' has 64 MiB for VMs, VM needs 256 MiB; /);
  assert.match(e.message, /--max-vm-memory.*free memory.*--smart-paging/);
});

const spec = parseVmSpec({
  name: 'web1',
  id: newVmId(),
  memoryMiB: 256,
  cpus: 1,
  machine: 'pc-q35-7.2',
  disks: [{ id: 'disk0', path: '/pool/web1.qcow2', format: 'qcow2' }],
  boot: { kind: 'disk' },
  configPath: '/vms/web1',
  checkpointPath: '/vms/web1',
  pagingPath: '/vms/pa,ging',
});
const paths = { qmpSocket: '/run/q.sock', serialLog: '/run/s.log', pidFile: '/run/p' };

test('smart paging argv: the RAM backend keeps the id pc.ram; a normal VM argv has no backend', () => {
  const normal = buildArgv(spec, { accel: 'tcg', paths });
  assert.ok(!normal.includes('-object'));
  assert.equal(normal[normal.indexOf('-machine') + 1], 'pc-q35-7.2');
  const paged = buildArgv(spec, { accel: 'tcg', paths, memoryFile: '/vms/pa,ging/web1.b.smartpaging' });
  assert.equal(paged[paged.indexOf('-machine') + 1], 'pc-q35-7.2,memory-backend=pc.ram');
  assert.equal(
    paged[paged.indexOf('-object') + 1],
    'memory-backend-file,id=pc.ram,size=256M,mem-path=/vms/pa,,ging/web1.b.smartpaging,share=on,prealloc=off',
  );
  // Everything else is the same argv.
  const strip = (a: string[]): string[] => a.filter((x) => !x.startsWith('memory-backend') && !x.startsWith('pc-q35'));
  assert.deepEqual(
    strip(paged).filter((x) => x !== '-object'),
    strip(normal),
  );
});

const nodes = (...n: Array<[string, number]>): PlacementNode[] =>
  n.map(([name, freeMiB]) => ({ name, up: true, paused: false, freeMiB }));
const vm = (name: string, memoryMiB: number, smartPaging: boolean) => ({
  name,
  memoryMiB,
  priority: 'normal' as const,
  preferredOwners: [],
  antiAffinity: [],
  smartPaging,
});

test('smart paging placement: a node with room first; without one, the most free node, with a warning', () => {
  const roomy = place(nodes(['a', 100], ['b', 600]), [], [vm('v1', 512, true)]);
  assert.equal(roomy[0]!.to, 'b');
  assert.deepEqual(roomy[0]!.warnings, []);
  const paged = place(nodes(['a', 100], ['b', 200]), [], [vm('v1', 512, true), vm('v2', 150, false)]);
  assert.equal(paged[0]!.to, 'b');
  assert.match(paged[0]!.warnings.join(), /Smart Paging file there/);
  // The paging-file VM took no RAM from b: v2 still fits there.
  assert.equal(paged[1]!.to, 'b');
  const refused = place(nodes(['a', 100]), [], [vm('v1', 512, false)]);
  assert.equal(refused[0]!.to, null);
});
