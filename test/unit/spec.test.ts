import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseVmSpec, newVmId } from '../../src/vm/spec.js';
import { createVm } from '../../src/vm/lifecycle.js';
import { buildArgv } from '../../src/qemu/argv.js';
import { FerryError } from '../../src/errors.js';

const base = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  name: 'web1',
  id: newVmId(),
  memoryMiB: 256,
  cpus: 1,
  disks: [{ id: 'disk0', path: '/pool/web1.qcow2', format: 'qcow2' }],
  boot: { kind: 'disk' },
  configPath: '/vms/web1',
  checkpointPath: '/vms/web1',
  pagingPath: '/vms/web1',
  ...over,
});

test('a valid spec parses with defaults', () => {
  const s = parseVmSpec(base());
  assert.equal(s.machine, 'pc-i440fx-7.2');
  assert.equal(s.cpuModel, 'qemu64');
  assert.equal(s.disks[0]!.cache, 'none');
});

test('bad fields are named with their value and the fix', () => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [base({ disks: [{ id: 'disk0', path: '/p.img', format: 'qcow3' }] }), /disks\.0\.format.*"qcow3".*qcow2/],
    [base({ memoryMiB: 4 }), /memoryMiB.*4.*at least 16/],
    [base({ name: '../etc' }), /name.*"\.\.\/etc".*letters/],
    [base({ disks: [{ id: 'disk0', path: 'relative.img', format: 'raw' }] }), /disks\.0\.path.*absolute/],
    [base({ machine: 'pc' }), /machine.*versioned machine type/],
    [base({ bogus: 1 }), /unknown field.*'bogus'.*remove/],
    [base({ disks: [] }), /boot.*no disk/],
    [base({ id: undefined }), /field 'id' \(missing\)/],
  ];
  for (const [input, re] of cases) {
    assert.throws(
      () => parseVmSpec(input),
      (e: FerryError) => {
        assert.equal(e.code, 'E_INVALID_INPUT');
        assert.match(e.message, /^Cannot /);
        assert.match(e.message, re);
        return true;
      },
    );
  }
});

test('createVm: a missing kernel, a missing image or a bad size creates nothing', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-unit-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  const cfg = path.join(dir, 'vm');
  const kernelVm = base({
    configPath: cfg,
    checkpointPath: cfg,
    pagingPath: cfg,
    disks: [],
    boot: { kind: 'kernel', kernel: '/nonexistent/vmlinuz' },
  });
  await assert.rejects(
    createVm(kernelVm),
    (e: FerryError) => e.code === 'E_FILE_NOT_FOUND' && /boot\.kernel.*\/nonexistent\/vmlinuz/.test(e.message),
  );
  const imgVm = base({
    configPath: cfg,
    checkpointPath: cfg,
    pagingPath: cfg,
    disks: [{ id: 'disk0', path: path.join(dir, 'nope.qcow2'), format: 'qcow2' }],
  });
  await assert.rejects(
    createVm(imgVm),
    (e: FerryError) => e.code === 'E_DISK_NOT_FOUND' && /nope\.qcow2/.test(e.message),
  );
  await assert.rejects(
    createVm(imgVm, { createDisks: { disk0: 1000 } }),
    (e: FerryError) => e.code === 'E_INVALID_INPUT' && /multiple of 512/.test(e.message),
  );
  await assert.rejects(createVm({ ...imgVm, memoryMiB: 'lots' }), (e: FerryError) => e.code === 'E_INVALID_INPUT');
  assert.deepEqual(await fsp.readdir(dir), [], 'nothing was created');
});

test('argv: the same spec gives the same device layout on every host; incoming adds -S -incoming defer', () => {
  const spec = parseVmSpec(
    base({
      disks: [
        { id: 'disk0', path: '/pool/a.qcow2', format: 'qcow2' },
        { id: 'disk1', path: '/pool/b.raw', format: 'raw', cache: 'writeback' },
      ],
      nics: [{ id: 'nic0', switch: 'lan', mac: '52:54:00:12:34:56' }],
    }),
  );
  const paths = { qmpSocket: '/run/q.sock', serialLog: '/run/s.log', pidFile: '/run/p' };
  const a = buildArgv(spec, { accel: 'tcg', paths });
  const b = buildArgv(spec, { accel: 'tcg', paths, incoming: true });
  assert.deepEqual(b.slice(0, a.length), a);
  assert.deepEqual(b.slice(a.length), ['-S', '-incoming', 'defer']);
  const joined = a.join(' ');
  assert.match(joined, /-machine pc-i440fx-7\.2/);
  assert.match(joined, /virtio-blk-pci,drive=disk0,id=disk0,bus=pci\.0,addr=0x4,bootindex=0/);
  assert.match(joined, /virtio-blk-pci,drive=disk1,id=disk1,bus=pci\.0,addr=0x5/);
  assert.match(joined, /virtio-net-pci,netdev=net-nic0,id=nic0,mac=52:54:00:12:34:56,bus=pci\.0,addr=0x14/);
  const blockdevs = a.flatMap((x, i) => (a[i - 1] === '-blockdev' ? [JSON.parse(x) as Record<string, unknown>] : []));
  assert.deepEqual(
    blockdevs.map((d) => d['node-name']),
    ['disk0-file', 'disk0', 'disk1-file', 'disk1'],
  );
  assert.equal(
    (blockdevs[0]!.cache as { direct: boolean }).direct,
    true,
    'migratable disks bypass the host page cache',
  );
  assert.equal((blockdevs[2]!.cache as { direct: boolean }).direct, false);
});

test('a disk backing chain is pinned into -blockdev nodes: no header names a file QEMU opens', () => {
  const spec = parseVmSpec(
    base({
      disks: [
        { id: 'disk0', path: '/pool/web1/ck2.qcow2', format: 'qcow2' },
        { id: 'disk1', path: '/pool/web1/data.qcow2', format: 'qcow2' },
        { id: 'disk2', path: '/pool/web1/raw.img', format: 'raw' },
      ],
    }),
  );
  const paths = { qmpSocket: '/run/q.sock', serialLog: '/run/s.log', pidFile: '/run/p' };
  const chains = new Map([
    [
      'disk0',
      [
        { path: '/pool/web1/ck2.qcow2', format: 'qcow2' },
        { path: '/pool/web1/ck1.qcow2', format: 'qcow2' },
        { path: '/pool/web1/base.img', format: 'raw' },
      ],
    ],
  ]);
  const a = buildArgv(spec, { accel: 'tcg', paths, chains });
  const nodes = a.flatMap((x, i) => (a[i - 1] === '-blockdev' ? [JSON.parse(x) as Record<string, unknown>] : []));
  const byName = new Map(nodes.map((n) => [n['node-name'], n]));
  // Below the image, bottom first, read-only, each format pinned; the raw base has no backing option at all.
  assert.deepEqual(
    nodes.map((n) => n['node-name']),
    ['disk0-file', 'disk0-b2-file', 'disk0-b2', 'disk0-b1-file', 'disk0-b1', 'disk0', 'disk1-file', 'disk1'].concat([
      'disk2-file',
      'disk2',
    ]),
  );
  assert.deepEqual(byName.get('disk0-b2'), {
    driver: 'raw',
    file: 'disk0-b2-file',
    'node-name': 'disk0-b2',
    cache: { direct: true, 'no-flush': false },
    'read-only': true,
  });
  assert.equal(byName.get('disk0-b2-file')!.filename, '/pool/web1/base.img');
  assert.equal(byName.get('disk0-b1')!.backing, 'disk0-b2');
  assert.equal(byName.get('disk0-b1')!['read-only'], true);
  assert.equal(byName.get('disk0')!.backing, 'disk0-b1');
  // A qcow2 disk without a checked chain opens no backing file, whatever its header says.
  assert.equal(byName.get('disk1')!.backing, null);
  assert.ok(!('backing' in byName.get('disk2')!));
});
