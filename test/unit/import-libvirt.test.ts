// The libvirt domain XML parser (pure): what it maps, what it lists as not carried over, and
// what it refuses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseLibvirtDomain } from '../../src/vm/import-libvirt.js';
import { FerryError } from '../../src/errors.js';

export const DOMAIN = `<domain type='kvm'>
  <name>web1</name>
  <uuid>6f1c2b0e-2a0c-4e0b-9d47-3a1b2c3d4e5f</uuid>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>524288</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram>
    <boot dev='cdrom'/>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/><smm state='on'/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>Westmere</model></cpu>
  <clock offset='utc'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/pool/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/pool/web1-data.img'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/pool/debian.iso'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:AB:CD:EF'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <graphics type='spice' autoport='yes'/>
    <video><model type='qxl'/></video>
    <sound model='ich9'/>
  </devices>
</domain>`;

test('libvirt import: memory, vCPUs, CPU, machine, firmware, disks, CD-ROM, NIC, boot order, screen', () => {
  const p = parseLibvirtDomain(DOMAIN);
  assert.equal(p.name, 'web1');
  assert.equal(p.uuid, '6f1c2b0e-2a0c-4e0b-9d47-3a1b2c3d4e5f');
  assert.equal(p.memoryMiB, 512, 'currentMemory is what the guest has');
  assert.equal(p.cpus, 2);
  assert.equal(p.cpuModel, 'Westmere');
  assert.equal(p.machine, 'pc-q35-7.2');
  assert.equal(p.firmware, 'uefi');
  assert.equal(p.nvram, '/var/lib/libvirt/qemu/nvram/web1_VARS.fd');
  assert.deepEqual(p.disks, [
    { target: 'vda', path: '/pool/web1.qcow2', format: 'qcow2', bus: 'virtio', readOnly: false },
    { target: 'sda', path: '/pool/web1-data.img', format: 'raw', bus: 'ide', readOnly: true },
  ]);
  assert.deepEqual(p.cdroms, [{ target: 'sdb', path: '/pool/debian.iso' }]);
  assert.deepEqual(p.nics, [{ kind: 'bridge', source: 'br0', mac: '52:54:00:ab:cd:ef' }]);
  assert.deepEqual(p.boot, ['cdrom', 'disk']);
  assert.equal(p.display, 'vga');
  const notes = p.unmapped.join('\n');
  for (const re of [/graphics 'spice'/, /video 'qxl'/, /<channel>/, /<sound>/, /feature <smm>/, /loader/])
    assert.match(notes, re);
});

test('libvirt import: per-device boot order wins; BIOS; a network NIC; host-passthrough is listed', () => {
  const xml = `<domain type='kvm'><name>db</name><memory>262144</memory><vcpu>1</vcpu>
    <os><type arch='x86_64' machine='pc'>hvm</type></os><cpu mode='host-passthrough'/>
    <devices>
      <disk type='file' device='disk'><driver type='raw'/><source file='/p/a.img'/><target dev='hda' bus='ide'/>
        <boot order='2'/></disk>
      <interface type='network'><source network='default'/><model type='e1000'/><boot order='1'/></interface>
    </devices></domain>`;
  const p = parseLibvirtDomain(xml);
  assert.equal(p.firmware, 'bios');
  assert.equal(p.machine, 'pc');
  assert.equal(p.memoryMiB, 256);
  assert.equal(p.cpuModel, undefined);
  assert.deepEqual(p.boot, ['net0', 'hda']);
  assert.deepEqual(p.nics, [{ kind: 'network', source: 'default' }]);
  assert.equal(p.display, 'none');
  assert.match(p.unmapped.join('\n'), /host-passthrough/);
  assert.match(p.unmapped.join('\n'), /model 'e1000' becomes virtio-net/);
});

test('libvirt import: malformed or unsupported domains are refused with the reason', () => {
  const cases: Array<[string, RegExp]> = [
    ['<domain><name>x</name><memory>1</memory>', /not well-formed XML/],
    ['<notdomain/>', /root element is not <domain>/],
    ['<!DOCTYPE x [<!ENTITY a "b">]><domain/>', /DOCTYPE/],
    [
      `<domain><name>a</name><memory>262144</memory><os><type arch='aarch64'>hvm</type></os>
       <devices><disk type='file' device='disk'><source file='/p/a'/><target dev='vda'/></disk></devices></domain>`,
      /aarch64.*x86_64 HVM/,
    ],
    [
      `<domain><name>a</name><memory>262144</memory><os><type>hvm</type></os>
       <devices><disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vda'/></disk></devices></domain>`,
      /disk vda is a block source/,
    ],
    [`<domain><name>a</name><memory>262144</memory><os><type>hvm</type></os><devices/></domain>`, /no disk or CD-ROM/],
  ];
  for (const [xml, re] of cases) {
    assert.throws(
      () => parseLibvirtDomain(xml),
      (e: FerryError) => {
        assert.equal(e.code, 'E_INVALID_INPUT');
        assert.match(e.message, /^Cannot import the libvirt domain: /);
        assert.match(e.message, re);
        return true;
      },
    );
  }
});
