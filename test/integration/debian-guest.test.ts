// Boots the Debian 12 test guest (guest/debian/build.sh) with plain QEMU, the same image twice:
// SeaBIOS on pc-i440fx-7.2 and OVMF on pc-q35-7.2, each with a NoCloud seed whose user-data
// starts a unit writing `ferry-marker N` to the serial port every second. Checks the serial
// login prompt and the markers, and reports boot-to-login times (TCG here: minutes, not seconds).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { debianGuestDir, debianGuestImage } from '../../guest/paths.js';
import { createImage } from '../../src/qemu/img.js';
import { buildSeed } from '../../src/vm/cloud-init.js';
import { createVarsFile, ovmfPaths, pflashArgs } from '../../src/qemu/firmware.js';
import { testAccel } from '../helpers.js';

const BOOT_DEADLINE_MS = 600_000;
const MARKER_LOOP = 'n=0; while :; do n=$((n+1)); echo "ferry-marker $n" >/dev/ttyS0; sleep 1; done';
const USER_DATA = `#cloud-config
bootcmd:
  - [systemd-run, --no-block, --unit=ferry-marker, sh, -c, '${MARKER_LOOP}']
`;

interface Vm {
  child: ChildProcess;
  log: string;
  startedAt: number;
  exited: Promise<void>;
  exitInfo: string | null;
  stderr: string;
}

function spawnQemu(args: string[], log: string): Vm {
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const vm: Vm = { child, log, startedAt: Date.now(), exitInfo: null, stderr: '', exited: Promise.resolve() };
  child.stderr.setEncoding('utf8').on('data', (d: string) => (vm.stderr += d));
  vm.exited = new Promise((res) => {
    child.on('exit', (code, sig) => {
      vm.exitInfo = `exit code ${code} signal ${sig}`;
      res();
    });
    child.on('error', (err) => {
      vm.exitInfo = `spawn error: ${err.message}`;
      res();
    });
  });
  return vm;
}

async function kill(vm: Vm): Promise<void> {
  if (vm.exitInfo === null) vm.child.kill('SIGKILL');
  await vm.exited;
}

const markers = (text: string): number[] => [...text.matchAll(/ferry-marker (\d+)/g)].map((m) => Number(m[1]));

/** Polls the serial log until `done(text, ms)`, ms since QEMU started; fails if QEMU exits or the deadline passes. */
async function waitFor(vm: Vm, what: string, done: (text: string, ms: number) => boolean): Promise<string> {
  for (;;) {
    const text = await fsp.readFile(vm.log, 'utf8').catch(() => '');
    if (done(text, Date.now() - vm.startedAt)) return text;
    const tail = text.slice(-800);
    if (vm.exitInfo !== null)
      assert.fail(`QEMU exited (${vm.exitInfo}) before ${what}; stderr: ${vm.stderr.trim()}; serial tail: ${tail}`);
    if (Date.now() - vm.startedAt > BOOT_DEADLINE_MS)
      assert.fail(`no ${what} within ${BOOT_DEADLINE_MS / 1000} s; serial tail: ${tail}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function bootDebian(t: TestContext, firmware: 'bios' | 'uefi'): Promise<void> {
  const image = debianGuestImage();
  if (!image) {
    t.skip(
      `Debian guest not built in ${debianGuestDir()}: run scripts/setup (or guest/debian/build.sh ${debianGuestDir()})`,
    );
    return;
  }
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), `ferry-debian-${firmware}-`));
  const vms: Vm[] = [];
  t.after(async () => {
    await Promise.all(vms.map(kill));
    await fsp.rm(dir, { recursive: true, force: true });
  });
  // An overlay keeps the cached image untouched.
  const disk = path.join(dir, 'disk.qcow2');
  await createImage(disk, 'qcow2', 0, { backing: { path: image, format: 'qcow2' } });
  const seed = await buildSeed({
    dir,
    userData: USER_DATA,
    metaData: `instance-id: ferry-${firmware}\nlocal-hostname: ferry-${firmware}\n`,
    signal: AbortSignal.timeout(30_000),
  });

  let machine = firmware === 'bios' ? 'pc-i440fx-7.2' : 'pc-q35-7.2';
  const flash: string[] = [];
  if (firmware === 'uefi') {
    const vars = await createVarsFile(path.join(dir, 'OVMF_VARS.fd'));
    const p = pflashArgs(vars, ovmfPaths());
    flash.push(...p.blockdevs);
    machine = [machine, ...p.machineProps].join(',');
  }
  const log = path.join(dir, 'serial.log');
  const blockdev = (name: string, filename: string, format: string, readOnly: boolean): string[] => [
    '-blockdev',
    JSON.stringify({ driver: 'file', filename, 'node-name': `${name}-file`, 'read-only': readOnly }),
    '-blockdev',
    JSON.stringify({ driver: format, file: `${name}-file`, 'node-name': name, 'read-only': readOnly }),
  ];
  // One flag and its value per row.
  const args = [
    ['-nodefaults', '-display', 'none', '-no-reboot'],
    ['-accel', await testAccel()],
    ['-machine', machine],
    ['-cpu', 'qemu64', '-m', '512M', '-smp', '1', '-name', `debian-${firmware}`],
    flash,
    blockdev('disk0', disk, 'qcow2', false),
    ['-device', 'virtio-blk-pci,drive=disk0,id=vda,bootindex=0'],
    blockdev('seed0', seed, 'raw', true),
    ['-device', 'virtio-blk-pci,drive=seed0,id=vdb'],
    ['-netdev', 'user,id=net0', '-device', 'virtio-net-pci,netdev=net0,id=nic0'],
    ['-serial', `file:${log}`],
  ].flat();
  const vm = spawnQemu(args, log);
  vms.push(vm);

  let loginMs: number | null = null;
  let loginAt = 0;
  let firstMarkerMs: number | null = null;
  const text = await waitFor(vm, 'a login prompt and 3 markers after it', (s, ms) => {
    if (firstMarkerMs === null && markers(s).length > 0) firstMarkerMs = ms;
    if (loginMs === null && /login: /.test(s)) [loginMs, loginAt] = [ms, s.search(/login: /)];
    return loginMs !== null && markers(s.slice(loginAt)).length >= 3;
  });
  await kill(vm);
  const seen = markers(text);
  const secs = (ms: number | null): string => (ms === null ? '-' : `${(ms / 1000).toFixed(1)} s`);
  t.diagnostic(
    `${firmware} on ${machine.split(',')[0]}: boot to login ${secs(loginMs)}, ` +
      `to the first marker ${secs(firstMarkerMs)}; ` +
      `markers ${seen[0]}..${seen.at(-1)}`,
  );
  assert.ok(seen.length >= 3, `at least 3 markers (got ${seen.join(',')})`);
  for (let i = 1; i < seen.length; i++)
    assert.equal(seen[i], seen[i - 1]! + 1, `markers count on by one: ${seen.join(',')}`);
  assert.match(text, new RegExp(`ferry-${firmware} login: `), 'cloud-init set the hostname from the meta-data');
  // The same disk booted through the firmware asked for: the kernel reports EFI only under OVMF.
  if (firmware === 'uefi') assert.match(text, /efi: EFI v[\d.]+ by EDK II/);
  else assert.doesNotMatch(text, /efi: EFI v/);
}

test(
  'Debian guest: SeaBIOS on pc-i440fx-7.2 boots to a serial login, cloud-init runs the seed',
  { timeout: 900_000 },
  (t) => bootDebian(t, 'bios'),
);

test('Debian guest: OVMF on pc-q35-7.2 boots to a serial login, cloud-init runs the seed', { timeout: 900_000 }, (t) =>
  bootDebian(t, 'uefi'),
);
