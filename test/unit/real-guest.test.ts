// Real guests' hardware from one spec (pure): UEFI flash with the VM's own variable store as a
// disk id, q35 devices behind root ports at fixed slots, CD-ROMs and the boot order, the VGA
// screen on a VNC Unix socket and the serial port as a socket with QEMU's log; the image
// chain QEMU is told to read; boot order and machine type resolution.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseVmSpec, newVmId } from '../../src/vm/spec.js';
import { buildArgv, isVarsQdev } from '../../src/qemu/argv.js';
import { chainFilename } from '../../src/qemu/img-files.js';
import { resolveBootOrder, resolveMachine } from '../../src/vm/real-guest.js';

const ovmf = { code: '/fw/OVMF_CODE_4M.fd', vars: '/fw/OVMF_VARS_4M.fd' };
const paths = {
  qmpSocket: '/run/vm/qmp.sock',
  serialLog: '/run/vm/serial.log',
  serialSocket: '/run/vm/serial.sock',
  vncSocket: '/run/vm/vnc.sock',
  pidFile: '/run/vm/qemu.pid',
};

const uefiQ35 = (): ReturnType<typeof parseVmSpec> =>
  parseVmSpec({
    name: 'deb',
    id: newVmId(),
    memoryMiB: 512,
    cpus: 1,
    machine: 'pc-q35-7.2',
    firmware: 'uefi',
    disks: [
      { id: 'disk0', path: '/pool/deb/disk0.qcow2', format: 'qcow2' },
      { id: 'uefivars', path: '/pool/deb/uefi-vars.fd', format: 'raw', role: 'uefi-vars' },
    ],
    cdroms: [
      { id: 'cd0', path: '/iso/debian.iso', role: 'media' },
      { id: 'cidata', path: 'seed.iso', role: 'cloud-init' },
    ],
    nics: [{ id: 'nic0', switch: 'lan', mac: '52:54:00:12:34:56' }],
    boot: { kind: 'disk' },
    bootOrder: ['cd0', 'disk0'],
    display: 'vga',
    configPath: '/pool/deb',
    checkpointPath: '/pool/deb',
    pagingPath: '/pool/deb',
  });

test('argv: UEFI on q35 — pflash from the spec, root ports, CD-ROMs on AHCI, the seed on virtio, boot order', () => {
  const a = buildArgv(uefiQ35(), { accel: 'tcg', paths, ovmf });
  const joined = a.join(' ');
  assert.match(joined, /-machine pc-q35-7\.2,pflash0=ovmf-code,pflash1=uefivars /);
  const blockdevs = a.flatMap((x, i) => (a[i - 1] === '-blockdev' ? [JSON.parse(x) as Record<string, unknown>] : []));
  assert.deepEqual(
    blockdevs.map((d) => d['node-name']),
    ['ovmf-code-file', 'ovmf-code', 'uefivars-file', 'uefivars', 'disk0-file', 'disk0', 'cd0-file', 'cd0'].concat([
      'cidata-file',
      'cidata',
    ]),
  );
  assert.equal(blockdevs[2]!.filename, '/pool/deb/uefi-vars.fd', 'the store is the VM file, not the template');
  assert.equal(blockdevs[3]!['read-only'], false);
  assert.equal(blockdevs[0]!['read-only'], true, 'firmware code is read-only');
  assert.match(joined, /pcie-root-port,id=rp4,bus=pcie\.0,addr=0x4,chassis=4,port=4/);
  assert.match(joined, /virtio-blk-pci,drive=disk0,id=disk0,bus=rp4,addr=0x0,bootindex=1/);
  assert.match(joined, /pcie-root-port,id=rp20,bus=pcie\.0,addr=0x14/);
  assert.match(joined, /virtio-net-pci,netdev=net-nic0,id=nic0,mac=52:54:00:12:34:56,bus=rp20,addr=0x0/);
  assert.match(joined, /ide-cd,drive=cd0,id=cd0,bus=ide\.0,unit=0,bootindex=0/);
  // Cloud kernels have no AHCI driver: the seed is a read-only virtio disk behind its own port.
  assert.match(joined, /virtio-blk-pci,drive=cidata,id=cidata,bus=rp28,addr=0x0( |$)/, 'the seed is not bootable');
  assert.match(joined, /pcie-root-port,id=rp28,bus=pcie\.0,addr=0x1c,/);
  assert.doesNotMatch(joined, /ide-cd,drive=cidata/);
  assert.ok(
    blockdevs.some((d) => d.filename === '/pool/deb/seed.iso'),
    'relative CD-ROMs live in the VM folder',
  );
  assert.doesNotMatch(joined, /uefivars,id=/, 'the variable store is no guest disk');
  assert.match(joined, /-device VGA,id=video0,bus=pcie\.0,addr=0x2/);
  assert.match(joined, /-vnc unix:\/run\/vm\/vnc\.sock/);
  assert.match(
    joined,
    new RegExp(
      String.raw`-chardev socket,id=serial0,path=\/run\/vm\/serial\.sock,server=on,wait=off,` +
        String.raw`logfile=\/run\/vm\/serial\.log,logappend=on`,
    ),
  );
  assert.doesNotMatch(joined, /tcp:|:59\d\d/, 'no TCP port for the display');
  assert.ok(isVarsQdev('/machine/system.flash1') && !isVarsQdev('/machine/system.flash0') && !isVarsQdev('disk0'));
});

test('argv: the same spec gives the same argv (both ends of a move); older specs keep their layout', () => {
  const s = uefiQ35();
  assert.deepEqual(buildArgv(s, { accel: 'tcg', paths, ovmf }), buildArgv(s, { accel: 'tcg', paths, ovmf }));
  const old = parseVmSpec({
    name: 'old',
    id: newVmId(),
    memoryMiB: 256,
    cpus: 1,
    disks: [{ id: 'disk0', path: '/pool/old.qcow2', format: 'qcow2' }],
    boot: { kind: 'disk' },
    configPath: '/vms/old',
    checkpointPath: '/vms/old',
    pagingPath: '/vms/old',
  });
  assert.equal(old.firmware, 'bios');
  assert.equal(old.display, 'none');
  assert.deepEqual(old.cdroms, []);
  const joined = buildArgv(old, { accel: 'tcg', paths }).join(' ');
  assert.match(joined, /-machine pc-i440fx-7\.2 /);
  assert.match(joined, /virtio-blk-pci,drive=disk0,id=disk0,bus=pci\.0,addr=0x4,bootindex=0/);
  assert.doesNotMatch(joined, /VGA|-vnc|pflash|root-port/);
});

test('spec: UEFI needs exactly one raw variable store; boot order names bootable devices once', () => {
  const base = uefiQ35() as unknown as Record<string, unknown>;
  const disks = base.disks as Array<Record<string, unknown>>;
  assert.throws(() => parseVmSpec({ ...base, disks: [disks[0]] }), /firmware.*exactly one/);
  assert.throws(() => parseVmSpec({ ...base, firmware: 'bios' }), /'bios' but the VM has a UEFI variable store/);
  assert.throws(() => parseVmSpec({ ...base, bootOrder: ['cidata'] }), /not a bootable/);
  assert.throws(() => parseVmSpec({ ...base, bootOrder: ['disk0', 'disk0'] }), /twice/);
  assert.throws(() => parseVmSpec({ ...base, cdroms: [{ id: 'disk0', path: '/a.iso' }] }), /duplicates device id/);
  assert.throws(() => parseVmSpec({ ...base, cdroms: [{ id: 'cd0', path: '../x.iso' }] }), /inside the VM folder/);
});

test('image copy reads exactly the checked chain, formats pinned, nothing below it', () => {
  const f = chainFilename([
    { path: '/p/top.qcow2', format: 'qcow2' },
    { path: '/p/base.vmdk', format: 'vmdk' },
  ]);
  assert.ok(f.startsWith('json:'));
  assert.deepEqual(JSON.parse(f.slice(5)), {
    driver: 'qcow2',
    file: { driver: 'file', filename: '/p/top.qcow2' },
    backing: { driver: 'vmdk', file: { driver: 'file', filename: '/p/base.vmdk' }, backing: null },
  });
  const raw = JSON.parse(chainFilename([{ path: '/p/a.img', format: 'raw' }]).slice(5)) as Record<string, unknown>;
  assert.equal('backing' in raw, false, 'raw has no backing field');
  // Through descriptors: each file by the name the agent gave it (qemu/img-files.ts).
  const held = chainFilename([{ path: '/p/top.qcow2', format: 'qcow2' }], (p) =>
    p === '/p/top.qcow2' ? '/dev/fd/3' : p,
  );
  assert.match(held, /"filename":"\/dev\/fd\/3"/);
});

test('boot order and machine type from the flags', () => {
  const disks = [
    {
      id: 'disk0',
      path: '/a',
      format: 'qcow2' as const,
      bus: 'virtio' as const,
      readOnly: false,
      cache: 'none' as const,
    },
    {
      id: 'disk1',
      path: '/b',
      format: 'raw' as const,
      bus: 'virtio' as const,
      readOnly: false,
      cache: 'none' as const,
    },
  ];
  const cdroms = [{ id: 'cd0', path: '/i.iso', role: 'media' as const }];
  const nics = [{ id: 'nic0' }];
  assert.deepEqual(resolveBootOrder(undefined, { disks, cdroms, nics }, 'v'), ['disk0', 'cd0']);
  assert.deepEqual(resolveBootOrder(['cdrom', 'disk', 'net'], { disks, cdroms, nics }, 'v'), ['cd0', 'disk0', 'nic0']);
  assert.deepEqual(resolveBootOrder(['disk1'], { disks, cdroms, nics }, 'v'), ['disk1']);
  assert.throws(() => resolveBootOrder(['floppy'], { disks, cdroms, nics }, 'v'), /Cannot boot VM 'v' from 'floppy'/);
  const types = ['pc', 'q35', 'pc-i440fx-7.2', 'pc-i440fx-7.10', 'pc-i440fx-6.2', 'pc-q35-7.2', 'pc-q35-2.12'];
  assert.equal(resolveMachine('pc', types, 'h'), 'pc-i440fx-7.10');
  assert.equal(resolveMachine('q35', types, 'h'), 'pc-q35-7.2');
  assert.equal(resolveMachine('pc-q35-2.12', types, 'h'), 'pc-q35-2.12');
  assert.throws(() => resolveMachine('pc-q35-9.0', types, 'h'), /does not support it/);
});
