import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  compareVm,
  compareWarnings,
  planDestPaths,
  COMPARE_CODES,
  MEMORY_RESERVE_BYTES,
  type CompareInput,
  type Incompatibility,
} from '../../src/migration/compare.js';
import {
  chooseBaseline,
  usableModelNames,
  CPU_BASELINE_PREFERENCE,
  type CpuModelInfo,
} from '../../src/qemu/cpu-models.js';
import { HostView, type PoolView } from '../../src/api/schemas.js';
import { parseVmSpec, type VmSpec } from '../../src/vm/spec.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const VM_ID = '6f1c2a4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f';

const INTEL_FLAGS = [
  'fpu',
  'vme',
  'de',
  'pse',
  'tsc',
  'msr',
  'pae',
  'sse',
  'sse2',
  'ssse3',
  'sse4_1',
  'sse4_2',
  'avx',
  'avx2',
  'avx512f',
  'aes',
  'x2apic',
];

function pool(over: Partial<PoolView> & Pick<PoolView, 'name' | 'kind' | 'path'>): PoolView {
  return { totalBytes: 500 * GiB, freeBytes: 200 * GiB, granted: [], usable: true, ...over };
}

/** A complete HostView (parsed by the real zod schema so a missing field fails the test). */
function host(name: string, over: Partial<HostView> = {}): HostView {
  return HostView.parse({
    name,
    domainId: 'dom-7f3a',
    agentVersion: '0.1.0',
    cpu: { vendor: 'GenuineIntel', model: 'Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz', flags: INTEL_FLAGS, count: 16 },
    accelerator: { name: 'tcg', reason: '/dev/kvm is missing or not accessible' },
    qemu: {
      version: '7.2.11',
      machineTypes: ['pc', 'pc-i440fx-7.2', 'pc-i440fx-7.1', 'q35', 'pc-q35-7.2', 'pc-q35-7.1'],
    },
    memory: { totalBytes: 32 * GiB, freeBytes: 16 * GiB, vmBytes: 2 * GiB },
    pools: [
      pool({ name: 'local', kind: 'local', path: `/var/lib/ferry/${name}/local` }),
      pool({ name: 'shared', kind: 'shared', path: '/srv/ferry-shared', granted: ['host-a', 'host-b'] }),
    ],
    switches: [
      { name: 'prod', kind: 'bridge', bridge: 'br0' },
      { name: 'lab', kind: 'user', bridge: null },
    ],
    migration: { enabled: true, maxLive: 2, maxStorage: 2, networks: ['10.0.0.0/24'], tls: true, address: '10.0.0.1' },
    vms: 1,
    ...over,
  });
}

function vm(over: Record<string, unknown> = {}): VmSpec {
  return parseVmSpec({
    name: 'web1',
    id: VM_ID,
    memoryMiB: 1024,
    cpus: 2,
    cpuModel: 'Nehalem',
    machine: 'pc-i440fx-7.2',
    disks: [
      { id: 'disk0', path: '/srv/ferry-shared/web1/disk0.qcow2', format: 'qcow2' },
      { id: 'disk1', path: '/srv/ferry-shared/web1/data.raw', format: 'raw' },
    ],
    nics: [{ id: 'net0', switch: 'prod', mac: '52:54:00:12:34:56' }],
    boot: { kind: 'disk' },
    configPath: '/srv/ferry-shared/web1',
    checkpointPath: '/srv/ferry-shared/web1',
    pagingPath: '/srv/ferry-shared/web1',
    ...over,
  });
}

// What QEMU 7.2 reports under TCG (checked on this machine), trimmed.
const TCG_MODELS: CpuModelInfo[] = [
  { name: 'qemu64', unavailableFeatures: [], migrationSafe: true, aliasOf: 'qemu64-v1' },
  { name: 'Conroe', unavailableFeatures: [], migrationSafe: true, aliasOf: 'Conroe-v1' },
  { name: 'Penryn', unavailableFeatures: [], migrationSafe: true, aliasOf: 'Penryn-v1' },
  { name: 'Nehalem', unavailableFeatures: [], migrationSafe: true, aliasOf: 'Nehalem-v1' },
  { name: 'Westmere', unavailableFeatures: [], migrationSafe: true, aliasOf: 'Westmere-v1' },
  {
    name: 'SandyBridge',
    unavailableFeatures: ['x2apic', 'tsc-deadline'],
    migrationSafe: true,
    aliasOf: 'SandyBridge-v1',
  },
  {
    name: 'Skylake-Server',
    unavailableFeatures: ['pcid', 'x2apic', 'tsc-deadline', 'hle', 'invpcid', 'rtm', 'avx512f'],
    migrationSafe: true,
    aliasOf: 'Skylake-Server-v1',
  },
  { name: 'max', unavailableFeatures: [], migrationSafe: false },
  { name: 'host', unavailableFeatures: ['kvm'], migrationSafe: false },
];

function input(over: Partial<CompareInput> = {}): CompareInput {
  return {
    spec: vm(),
    running: true,
    source: host('host-a'),
    dest: host('host-b'),
    destVms: [{ name: 'db1', id: '0d6c7f2e-1111-4222-8333-944455556666' }],
    destCpuModels: TCG_MODELS,
    options: { includeStorage: false },
    ...over,
  };
}

function only(res: Incompatibility[], code: string): Incompatibility {
  assert.deepEqual(
    res.map((r) => r.code),
    [code],
    JSON.stringify(res, null, 2),
  );
  return res[0]!;
}

function assertForm(r: Incompatibility, dest = 'host-b'): void {
  assert.match(r.message, new RegExp(`^Cannot move VM 'web1' to '${dest}': [^;]+; .+`));
}

test('a compatible move (shared storage, live) returns no incompatibility', () => {
  assert.deepEqual(compareVm(input()), []);
  assert.deepEqual(compareVm(input({ running: false })), []);
});

test('every code is exported and unique', () => {
  const codes = Object.values(COMPARE_CODES);
  assert.equal(new Set(codes).size, codes.length);
  for (const c of [
    'E_CPU_VENDOR',
    'E_CPU_FEATURES',
    'E_SWITCH_MISSING',
    'E_MEMORY',
    'E_STORAGE_NOT_SHARED',
    'E_POOL_NOT_GRANTED',
    'E_MIGRATION_DISABLED',
    'E_DOMAIN',
    'E_NAME_EXISTS',
    'E_ID_EXISTS',
    'E_MACHINE_TYPE',
    'E_PASSTHROUGH_DISK',
    'E_SAME_HOST',
    'E_DEST_PATH',
    'E_DEST_SPACE',
  ]) {
    assert.ok(codes.includes(c as never), c);
  }
});

test('E_SAME_HOST: the only finding, pointing at move-storage', () => {
  const r = only(compareVm(input({ dest: host('host-a') })), 'E_SAME_HOST');
  assertForm(r, 'host-a');
  assert.match(r.message, /ferry move-storage web1/);
});

test('E_MIGRATION_DISABLED on the destination and on the source', () => {
  const d = host('host-b');
  d.migration.enabled = false;
  const r = only(compareVm(input({ dest: d })), 'E_MIGRATION_DISABLED');
  assertForm(r);
  assert.equal(r.field, 'migration.enabled');
  assert.match(r.message, /ferry host set host-b --migrations on/);

  const s = host('host-a');
  s.migration.enabled = false;
  const r2 = only(compareVm(input({ source: s })), 'E_MIGRATION_DISABLED');
  assert.match(r2.message, /ferry host set host-a --migrations on/);
});

test('E_DOMAIN: hosts of different CAs', () => {
  const r = only(compareVm(input({ dest: host('host-b', { domainId: 'dom-other' }) })), 'E_DOMAIN');
  assertForm(r);
  assert.equal(r.field, 'domainId');
  assert.match(r.message, /dom-other/);
  assert.match(r.message, /ferry host init host-b/);
  assert.match(r.message, /ferry domain sign REQUEST/);
});

test('E_NAME_EXISTS and E_ID_EXISTS', () => {
  const r = only(
    compareVm(input({ destVms: [{ name: 'web1', id: '0d6c7f2e-1111-4222-8333-944455556666' }] })),
    'E_NAME_EXISTS',
  );
  assertForm(r);
  assert.equal(r.field, 'name');
  assert.match(r.message, /ferry vm rm web1/);

  const r2 = only(compareVm(input({ destVms: [{ name: 'web1-old', id: VM_ID }] })), 'E_ID_EXISTS');
  assertForm(r2);
  assert.equal(r2.field, 'id');
  assert.match(r2.message, /web1-old/);

  const both = compareVm(input({ destVms: [{ name: 'web1', id: VM_ID }] })).map((x) => x.code);
  assert.deepEqual(both, ['E_NAME_EXISTS', 'E_ID_EXISTS']);
});

test('E_MACHINE_TYPE: the destination QEMU lacks the versioned board', () => {
  const d = host('host-b', {
    qemu: { version: '7.0.0', machineTypes: ['pc', 'pc-i440fx-7.0', 'pc-i440fx-6.2', 'q35', 'pc-q35-7.0'] },
  });
  const r = only(compareVm(input({ dest: d })), 'E_MACHINE_TYPE');
  assertForm(r);
  assert.equal(r.field, 'machine');
  assert.match(r.message, /'pc-i440fx-7\.2'/);
  assert.match(r.message, /newest: 'pc-q35-7\.0'|newest: 'pc-i440fx-7\.0'/);
});

test('E_ACCELERATOR: a running VM cannot go from KVM to TCG; a stopped one can', () => {
  const s = host('host-a', { accelerator: { name: 'kvm', reason: 'KVM ran the bootblock guest to its marker' } });
  const r = only(compareVm(input({ source: s })), 'E_ACCELERATOR');
  assertForm(r);
  assert.deepEqual(compareVm(input({ source: s, running: false })), []);
});

test('E_CPU_FEATURES: a named model with unavailable features lists them; an unknown model is named', () => {
  const r = only(compareVm(input({ spec: vm({ cpuModel: 'Skylake-Server' }) })), 'E_CPU_FEATURES');
  assertForm(r);
  assert.equal(r.field, 'cpuModel');
  assert.match(r.message, /pcid, x2apic, tsc-deadline, hle, invpcid, rtm, avx512f/);
  assert.match(r.message, /--cpu compat/);
  assert.match(r.message, /'Westmere'/, 'suggests the newest model the destination supports');

  const u = only(compareVm(input({ spec: vm({ cpuModel: 'Sapphire-Rapids' }) })), 'E_CPU_FEATURES');
  assert.match(u.message, /'Sapphire-Rapids' is unknown to QEMU on 'host-b'/);

  // 'host' under TCG: QEMU itself says it needs kvm.
  const h = only(compareVm(input({ spec: vm({ cpuModel: 'host' }) })), 'E_CPU_FEATURES');
  assert.match(h.message, /feature kvm/);
});

test('host/max under KVM: E_CPU_VENDOR when vendors differ, E_CPU_FEATURES for missing flags; not under TCG', () => {
  const kvm = { name: 'kvm' as const, reason: 'KVM ran the bootblock guest to its marker' };
  const kvmModels: CpuModelInfo[] = [
    ...TCG_MODELS.filter((m) => m.name !== 'host'),
    { name: 'host', unavailableFeatures: [], migrationSafe: false },
  ];
  const s = host('host-a', { accelerator: kvm });
  const amd = host('host-b', {
    accelerator: kvm,
    cpu: {
      vendor: 'AuthenticAMD',
      model: 'AMD EPYC 7302',
      flags: INTEL_FLAGS.filter((f) => f !== 'avx512f' && f !== 'x2apic'),
      count: 32,
    },
  });
  const res = compareVm(input({ spec: vm({ cpuModel: 'host' }), source: s, dest: amd, destCpuModels: kvmModels }));
  assert.deepEqual(
    res.map((x) => [x.code, x.field]),
    [
      ['E_CPU_VENDOR', 'cpu.vendor'],
      ['E_CPU_FEATURES', 'cpu.flags'],
    ],
  );
  for (const x of res) assertForm(x);
  assert.match(res[0]!.message, /GenuineIntel.*AuthenticAMD/);
  assert.match(res[1]!.message, /avx512f, x2apic/);

  // Same vendor, a superset of flags: fine.
  const intel = host('host-b', {
    accelerator: kvm,
    cpu: { vendor: 'GenuineIntel', model: 'Xeon', flags: [...INTEL_FLAGS, 'avx512bw'], count: 8 },
  });
  assert.deepEqual(
    compareVm(input({ spec: vm({ cpuModel: 'max' }), source: s, dest: intel, destCpuModels: kvmModels })),
    [],
  );

  // Both TCG: 'max' is QEMU's emulated CPU, the host's vendor and flags do not matter.
  const amdTcg = host('host-b', { cpu: amd.cpu });
  assert.deepEqual(compareVm(input({ spec: vm({ cpuModel: 'max' }), dest: amdTcg })), []);
});

test('E_MEMORY: only for a running VM, with free and needed amounts', () => {
  const d = host('host-b', { memory: { totalBytes: 4 * GiB, freeBytes: 1024 * MiB, vmBytes: 3 * GiB } });
  const r = only(compareVm(input({ dest: d })), 'E_MEMORY');
  assertForm(r);
  assert.equal(r.field, 'memoryMiB');
  assert.match(r.message, /needs 1024 MiB.*1024 MiB free, 768 MiB after its 256 MiB reserve/);
  assert.match(r.message, /free at least 256 MiB/);
  assert.deepEqual(compareVm(input({ dest: d, running: false })), []);
  // Exactly enough after the reserve.
  const exact = host('host-b', {
    memory: { totalBytes: 4 * GiB, freeBytes: 1024 * MiB + MEMORY_RESERVE_BYTES, vmBytes: 0 },
  });
  assert.deepEqual(compareVm(input({ dest: exact })), []);
});

test('E_SWITCH_MISSING names the NIC field and the command', () => {
  const spec = vm({
    nics: [
      { id: 'net0', switch: 'lab', mac: '52:54:00:12:34:56' },
      { id: 'net1', switch: 'prod', mac: '52:54:00:12:34:57' },
    ],
  });
  const d = host('host-b', { switches: [{ name: 'lab', kind: 'user', bridge: null }] });
  const r = only(compareVm(input({ spec, dest: d })), 'E_SWITCH_MISSING');
  assertForm(r);
  assert.equal(r.field, 'nics.1.switch');
  assert.match(r.message, /ferry switch new prod --host host-b --bridge br0/);
});

test('E_PASSTHROUGH_DISK: a host block device cannot move', () => {
  const spec = vm({
    disks: [
      { id: 'disk0', path: '/srv/ferry-shared/web1/disk0.qcow2', format: 'qcow2' },
      { id: 'disk1', path: '/dev/sdb', format: 'raw' },
    ],
  });
  const r = only(compareVm(input({ spec })), 'E_PASSTHROUGH_DISK');
  assertForm(r);
  assert.equal(r.field, 'disks.1.path');
  assert.match(r.message, /detach|convert/);
  // Also with --include-storage (and no path complaint for it).
  only(
    compareVm(input({ spec, options: { includeStorage: true, storagePath: '/var/lib/ferry/host-b/local/web1' } })),
    'E_PASSTHROUGH_DISK',
  );
});

test('E_STORAGE_NOT_SHARED: a disk or the VM folder in a local pool (or no shared pool)', () => {
  const spec = vm({
    disks: [
      { id: 'disk0', path: '/srv/ferry-shared/web1/disk0.qcow2', format: 'qcow2' },
      { id: 'disk1', path: '/var/lib/ferry/host-a/local/web1/data.raw', format: 'raw' },
    ],
  });
  const r = only(compareVm(input({ spec })), 'E_STORAGE_NOT_SHARED');
  assertForm(r);
  assert.equal(r.field, 'disks.1.path');
  assert.match(r.message, /local pool 'local' of 'host-a'/);
  assert.match(r.message, /--include-storage/);
  assert.match(r.message, /ferry move-storage/);

  const cfg = vm({
    configPath: '/var/lib/ferry/host-a/local/web1',
    checkpointPath: '/var/lib/ferry/host-a/local/web1',
    pagingPath: '/var/lib/ferry/host-a/local/web1',
  });
  assert.equal(only(compareVm(input({ spec: cfg })), 'E_STORAGE_NOT_SHARED').field, 'configPath');

  // The destination has no shared pool at that path.
  const d = host('host-b', {
    pools: [
      pool({ name: 'local', kind: 'local', path: '/var/lib/ferry/host-b/local' }),
      pool({ name: 'nfs', kind: 'shared', path: '/mnt/nfs', granted: ['host-b'] }),
    ],
  });
  const res = compareVm(input({ dest: d }));
  assert.deepEqual(
    res.map((x) => [x.code, x.field]),
    [
      ['E_STORAGE_NOT_SHARED', 'disks.0.path'],
      ['E_STORAGE_NOT_SHARED', 'disks.1.path'],
      ['E_STORAGE_NOT_SHARED', 'configPath'],
    ],
  );
  // A path that only looks like a prefix is not inside the pool.
  const tricky = vm({ disks: [{ id: 'disk0', path: '/srv/ferry-shared-evil/d.qcow2', format: 'qcow2' }] });
  assert.equal(only(compareVm(input({ spec: tricky })), 'E_STORAGE_NOT_SHARED').field, 'disks.0.path');
});

test('E_POOL_NOT_GRANTED: the shared pool exists on the destination but is not granted to it', () => {
  const d = host('host-b', {
    pools: [
      pool({ name: 'local', kind: 'local', path: '/var/lib/ferry/host-b/local' }),
      pool({ name: 'shared', kind: 'shared', path: '/srv/ferry-shared', granted: ['host-a'], usable: false }),
    ],
  });
  const res = compareVm(input({ dest: d }));
  assert.deepEqual(
    res.map((x) => x.code),
    ['E_POOL_NOT_GRANTED', 'E_POOL_NOT_GRANTED', 'E_POOL_NOT_GRANTED'],
  );
  assertForm(res[0]!);
  assert.match(res[0]!.message, /ferry pool grant shared --host host-b/);
  // Granted but not mounted: another fix.
  const unmounted = host('host-b', {
    pools: [
      pool({
        name: 'shared',
        kind: 'shared',
        path: '/srv/ferry-shared',
        granted: ['host-a', 'host-b'],
        usable: false,
        totalBytes: 0,
        freeBytes: 0,
      }),
    ],
  });
  assert.deepEqual(
    compareVm(input({ dest: unmounted })).map((x) => x.code),
    ['E_POOL_UNAVAILABLE', 'E_POOL_UNAVAILABLE', 'E_POOL_UNAVAILABLE'],
  );
});

test('with --include-storage: local disks are fine when the destination paths are in usable pools', () => {
  const spec = vm({
    disks: [{ id: 'disk0', path: '/var/lib/ferry/host-a/local/web1/disk0.qcow2', format: 'qcow2' }],
    configPath: '/var/lib/ferry/host-a/local/web1',
    checkpointPath: '/var/lib/ferry/host-a/local/web1',
    pagingPath: '/var/lib/ferry/host-a/local/web1',
  });
  const options = { includeStorage: true, storagePath: '/var/lib/ferry/host-b/local/web1' };
  assert.deepEqual(
    compareVm(input({ spec, options, diskSizes: { '/var/lib/ferry/host-a/local/web1/disk0.qcow2': 10 * GiB } })),
    [],
  );
  const plan = planDestPaths(spec, options);
  assert.equal(plan.configPath, '/var/lib/ferry/host-b/local/web1');
  assert.equal(plan.disks[0]!.dest, '/var/lib/ferry/host-b/local/web1/disk0.qcow2');
  assert.equal(plan.checkpointPath, '/var/lib/ferry/host-b/local/web1');
});

test(
  'E_DEST_PATH: relative, outside every pool, not granted, duplicate, unknown --vhd source, the ' +
    'source file itself',
  () => {
    const local = '/var/lib/ferry/host-a/local/web1';
    const spec = vm({
      disks: [
        { id: 'disk0', path: `${local}/disk0.qcow2`, format: 'qcow2' },
        { id: 'disk1', path: `${local}/data.raw`, format: 'raw' },
      ],
      configPath: local,
      checkpointPath: local,
      pagingPath: local,
    });
    const dst = '/var/lib/ferry/host-b/local/web1';

    const rel = compareVm(
      input({
        spec,
        options: {
          includeStorage: true,
          configPath: dst,
          vhd: { [`${local}/disk0.qcow2`]: 'rel/disk0.qcow2', [`${local}/data.raw`]: `${dst}/data.raw` },
        },
      }),
    );
    const r = only(rel, 'E_DEST_PATH');
    assertForm(r);
    assert.equal(r.field, 'disks.0.path');
    assert.match(r.message, /not an absolute path/);

    const outside = compareVm(input({ spec, options: { includeStorage: true, storagePath: '/opt/vms/web1' } }));
    assert.deepEqual(
      outside.map((x) => [x.code, x.field]),
      [
        ['E_DEST_PATH', 'disks.0.path'],
        ['E_DEST_PATH', 'disks.1.path'],
        ['E_DEST_PATH', 'configPath'],
      ],
    );
    assert.match(outside[0]!.message, /outside every storage pool of 'host-b'.*--storage-path/);

    const d = host('host-b', {
      pools: [
        pool({ name: 'local', kind: 'local', path: '/var/lib/ferry/host-b/local' }),
        pool({ name: 'shared', kind: 'shared', path: '/srv/ferry-shared', granted: ['host-a'], usable: false }),
      ],
    });
    const ng = compareVm(
      input({
        spec,
        dest: d,
        options: {
          includeStorage: true,
          configPath: dst,
          vhd: {
            [`${local}/disk0.qcow2`]: '/srv/ferry-shared/web1/disk0.qcow2',
            [`${local}/data.raw`]: `${dst}/data.raw`,
          },
        },
      }),
    );
    const n = only(ng, 'E_DEST_PATH');
    assert.match(n.message, /ferry pool grant shared --host host-b/);

    const dup = compareVm(
      input({
        spec,
        options: { includeStorage: true, storagePath: dst, vhd: { [`${local}/data.raw`]: `${dst}/disk0.qcow2` } },
      }),
    );
    assert.equal(only(dup, 'E_DEST_PATH').field, 'disks.1.path');

    const unknown = compareVm(
      input({ spec, options: { includeStorage: true, storagePath: dst, vhd: { '/nope/x.qcow2': `${dst}/x.qcow2` } } }),
    );
    assert.equal(only(unknown, 'E_DEST_PATH').field, 'vhd./nope/x.qcow2');

    // A disk already on the shared pool, "copied" to the same path: the same file.
    const same = compareVm(input({ options: { includeStorage: true } }));
    assert.deepEqual(
      same.map((x) => [x.code, x.field]),
      [
        ['E_DEST_PATH', 'disks.0.path'],
        ['E_DEST_PATH', 'disks.1.path'],
      ],
    );
    assert.match(same[0]!.message, /source file itself.*drop --include-storage/);
  },
);

test('E_DEST_SPACE: the sum of the disks going to one pool exceeds its free space; skipped without sizes', () => {
  const local = '/var/lib/ferry/host-a/local/web1';
  const spec = vm({
    disks: [
      { id: 'disk0', path: `${local}/disk0.qcow2`, format: 'qcow2' },
      { id: 'disk1', path: `${local}/data.raw`, format: 'raw' },
    ],
    configPath: local,
    checkpointPath: local,
    pagingPath: local,
  });
  const d = host('host-b', {
    pools: [pool({ name: 'local', kind: 'local', path: '/var/lib/ferry/host-b/local', freeBytes: 30 * GiB })],
  });
  const options = { includeStorage: true, storagePath: '/var/lib/ferry/host-b/local/web1' };
  const diskSizes = { [`${local}/disk0.qcow2`]: 20 * GiB, [`${local}/data.raw`]: 20 * GiB };
  const r = only(compareVm(input({ spec, dest: d, options, diskSizes })), 'E_DEST_SPACE');
  assertForm(r);
  assert.match(r.message, /need 40\.0 GiB in pool 'local'.*30\.0 GiB free/);
  assert.deepEqual(compareVm(input({ spec, dest: d, options })), []);
  assert.deepEqual(compareVm(input({ spec, dest: d, options, diskSizes: { [`${local}/disk0.qcow2`]: 20 * GiB } })), []);
  // The checkpoints' files and base images go too: counted in the checkpoint folder's pool.
  const withChain = { spec, dest: d, options, diskSizes: { [`${local}/disk0.qcow2`]: 20 * GiB }, chainBytes: 15 * GiB };
  const c = only(compareVm(input(withChain)), 'E_DEST_SPACE');
  assert.match(c.message, /disk 'disk0', its checkpoints need 35\.0 GiB in pool 'local'/);
});

test('several problems are all reported, each with a field and a fix', () => {
  const d = host('host-b', {
    domainId: 'dom-other',
    memory: { totalBytes: GiB, freeBytes: 512 * MiB, vmBytes: 0 },
    switches: [],
    migration: { enabled: false, maxLive: 2, maxStorage: 2, networks: [], tls: true, address: '10.0.0.2' },
  });
  const res = compareVm(
    input({ dest: d, spec: vm({ cpuModel: 'SandyBridge' }), destVms: [{ name: 'web1', id: VM_ID }] }),
  );
  assert.deepEqual(
    res.map((x) => x.code),
    [
      'E_MIGRATION_DISABLED',
      'E_DOMAIN',
      'E_NAME_EXISTS',
      'E_ID_EXISTS',
      'E_CPU_FEATURES',
      'E_MEMORY',
      'E_SWITCH_MISSING',
    ],
  );
  for (const x of res) {
    assertForm(x);
    assert.ok(x.field);
  }
});

test('chooseBaseline: the newest model usable on every host, else qemu64', () => {
  const tcg = usableModelNames(TCG_MODELS);
  assert.deepEqual(tcg, ['qemu64', 'Conroe', 'Penryn', 'Nehalem', 'Westmere', 'max']);
  assert.equal(chooseBaseline([tcg]), 'Westmere');
  assert.equal(chooseBaseline([tcg, ['qemu64', 'Conroe', 'Penryn', 'Nehalem']]), 'Nehalem');
  const skylake = [
    'Skylake-Server',
    'Skylake-Client',
    'Broadwell',
    'Haswell',
    'IvyBridge',
    'SandyBridge',
    'Westmere',
    'Nehalem',
    'qemu64',
  ];
  const cascade = ['Cascadelake-Server', ...skylake];
  assert.equal(chooseBaseline([cascade, skylake]), 'Skylake-Server');
  assert.equal(chooseBaseline([cascade, cascade]), 'Cascadelake-Server');
  assert.equal(
    chooseBaseline([
      ['EPYC-Rome', 'EPYC', 'Opteron_G2', 'qemu64'],
      ['EPYC-Milan', 'EPYC-Rome', 'EPYC', 'qemu64'],
    ]),
    'EPYC-Rome',
  );
  assert.equal(
    chooseBaseline([
      ['EPYC', 'qemu64'],
      ['Haswell', 'qemu64'],
    ]),
    'qemu64',
  );
  assert.equal(chooseBaseline([['EPYC'], ['Haswell']]), 'qemu64');
  assert.equal(chooseBaseline([]), 'qemu64');
  // Newest first, qemu64 last, no duplicates.
  assert.equal(CPU_BASELINE_PREFERENCE.at(-1), 'qemu64');
  assert.equal(new Set(CPU_BASELINE_PREFERENCE).size, CPU_BASELINE_PREFERENCE.length);
  assert.ok(CPU_BASELINE_PREFERENCE.indexOf('Skylake-Server') < CPU_BASELINE_PREFERENCE.indexOf('Haswell'));
  assert.ok(CPU_BASELINE_PREFERENCE.indexOf('EPYC-Milan') < CPU_BASELINE_PREFERENCE.indexOf('EPYC'));
});

test('W_TCG_GUEST_WRITES: a live move under TCG of a guest that may be Linux without pti=on is warned of', () => {
  const codes = (over: Partial<CompareInput>): string[] => compareWarnings(input(over)).map((w) => w.code);
  const w = compareWarnings(input())[0];
  assert.ok(w);
  assert.equal(w.code, 'W_TCG_GUEST_WRITES');
  assert.match(w.message, /^VM 'web1' runs without KVM \(TCG\) on 'host-a'.*if it is Linux, boot it with pti=on/);
  const kernel = (append: string): VmSpec => vm({ boot: { kind: 'kernel', kernel: 'vmlinuz', append } });
  assert.match(compareWarnings(input({ spec: kernel('console=ttyS0') }))[0]?.message ?? '', /has no pti=on/);
  assert.deepEqual(codes({ spec: kernel('console=ttyS0 pti=on quiet') }), []);
  assert.deepEqual(codes({ spec: kernel('console=ttyS0 nopti=on') }), ['W_TCG_GUEST_WRITES']);
  assert.deepEqual(codes({ spec: vm({ guest: 'bootblock' }) }), [], 'the bootblock guest has no paging');
  assert.deepEqual(codes({ running: false }), [], 'a stopped VM moves no memory');
  const kvm = { accelerator: { name: 'kvm' as const, reason: 'KVM ran a guest' } };
  assert.deepEqual(codes({ source: host('host-a', kvm), dest: host('host-b', kvm) }), []);
});
