// Real guests in a 2-host lab, driven through bin/ferry: the Debian 12 test image booted by
// SeaBIOS on pc and by OVMF on q35 with a cloud-init seed whose unit writes
// `ferry-marker N UPTIME` to the serial port every second. Each reaches its login prompt and
// moves live (BIOS: shared storage; UEFI: shared storage, shared nothing, then storage
// migration), the marker counting on across each move with no gap longer than the move's
// downtime + 2 s and the guest's uptime going on (no reboot). The UEFI guest also answers
// on its read-write serial console (which follows it to its new host) and shows a screen.
// Plus: vm import of a libvirt domain, and bad input that leaves nothing behind.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { ferry, ferryOk } from './cli.js';
import { hostData, serialLog, useLab } from './lab.js';
import { debianGuestDir, debianGuestImage, REPO_ROOT } from '../../guest/paths.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { createImage } from '../../src/qemu/img.js';
import { run, sleep } from '../../src/util/exec.js';

const L = useLab(2);
const image = debianGuestImage();
const skip = image ? false : `Debian guest not built in ${debianGuestDir()}: run scripts/setup`;
const BOOT_MS = 600_000;

// A plain systemd-run here would wait for the unit and deadlock the boot (cloud-init's bootcmd runs early).
const MARKER_SH =
  'n=0; while :; do n=$((n+1)); ' + 'echo "ferry-marker $n $(cut -d" " -f1 /proc/uptime)" >/dev/ttyS0; sleep 1; done';
const USER_DATA = `#cloud-config
bootcmd:
  - [systemd-run, --no-block, --unit=ferry-marker, sh, -c, '${MARKER_SH}']
`;

/** Every marker seen in any host's log of the VM, with the wall time it was first seen. */
class Markers {
  seen = new Map<number, { at: number; uptime: number }>();
  private timer: NodeJS.Timeout;
  constructor(private vmId: string) {
    this.timer = setInterval(() => void this.poll(), 100);
  }
  async poll(): Promise<void> {
    for (const h of ['host-a', 'host-b']) {
      const text = await fsp.readFile(serialLog(L, h, this.vmId), 'utf8').catch(() => '');
      for (const m of text.matchAll(/ferry-marker (\d+) ([\d.]+)/g)) {
        const n = Number(m[1]);
        if (!this.seen.has(n)) this.seen.set(n, { at: Date.now(), uptime: Number(m[2]) });
      }
    }
  }
  get last(): number {
    return Math.max(0, ...this.seen.keys());
  }
  async waitFor(n: number, timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (this.last < n) {
      if (Date.now() > until) throw new Error(`marker ${n} not seen within ${timeoutMs} ms (last ${this.last})`);
      await sleep(200);
    }
  }
  /** Markers from..to: none missing, uptime rising; returns the longest wall-clock gap between two. */
  check(from: number, to: number): { maxGapMs: number } {
    let maxGapMs = 0;
    for (let n = from + 1; n <= to; n++) {
      const a = this.seen.get(n - 1);
      const b = this.seen.get(n);
      assert.ok(a && b, `markers ${n - 1} and ${n} were both printed`);
      assert.ok(b.uptime > a.uptime, `uptime goes on (marker ${n}: ${b.uptime} after ${a.uptime}): no reboot`);
      maxGapMs = Math.max(maxGapMs, b.at - a.at);
    }
    return { maxGapMs };
  }
  stop(): void {
    clearInterval(this.timer);
  }
}

async function waitLogin(vm: VmView, t0: number): Promise<number> {
  for (;;) {
    const text = await fsp.readFile(serialLog(L, vm.host, vm.id), 'utf8').catch(() => '');
    if (/login: /.test(text) && /ferry-marker \d+/.test(text)) return Date.now() - t0;
    if (Date.now() - t0 > BOOT_MS) throw new Error(`no login prompt within ${BOOT_MS} ms: ${text.slice(-600)}`);
    await sleep(500);
  }
}

/**
 * One move, then the markers across it: the gap is at most the move's downtime + 3 s (the
 * guest's 1 s marker interval, and up to 2 s of TCG scheduling on a busy 2-core machine:
 * a gap of 2.1 s after a 97 ms downtime was seen). A stopped guest would show tens of seconds.
 */
async function moveAndCheck(m: Markers, what: string, args: string[], diag: (s: string) => void): Promise<void> {
  await m.waitFor(m.last + 3, 60_000);
  const before = m.last;
  const rec = await ferryOk<MigrationRecord>([...args, '--json'], { lab: L.lab, timeoutMs: 600_000 });
  assert.equal(rec.state, 'completed', `${what}: ${JSON.stringify(rec.error)}`);
  await m.waitFor(m.last + 4, 60_000);
  const { maxGapMs } = m.check(before, m.last);
  const downtime = rec.downtimeMs ?? 0;
  diag(`${what}: total ${rec.totalMs} ms, downtime ${downtime} ms, largest marker gap ${maxGapMs} ms`);
  assert.ok(maxGapMs <= downtime + 3000, `${what}: marker gap ${maxGapMs} ms > downtime ${downtime} ms + 3 s`);
}

async function show(name: string): Promise<VmView> {
  return ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });
}

let consoleProc: ChildProcess | null = null;
after(() => {
  consoleProc?.kill('SIGKILL');
});

test(
  'Debian on SeaBIOS/pc boots to login from --image and moves live on shared storage',
  { skip, timeout: 1_200_000 },
  async (t) => {
    await addImagesPool();
    const ud = path.join(L.dir, 'user-data');
    await fsp.writeFile(ud, USER_DATA);
    const t0 = Date.now();
    const vm = await ferryOk<VmView>(
      [
        ...['vm', 'new', 'deb-bios', '--host', 'host-a', '--image', image as string, '--memory', '512M'],
        ...[
          '--firmware',
          'bios',
          '--machine',
          'pc',
          '--cloud-init',
          ud,
          '--path',
          path.join(L.lab, 'shared', 'deb-bios'),
        ],
        ...['--start', '--json'],
      ],
      { lab: L.lab, timeoutMs: 300_000 },
    );
    assert.equal(vm.firmware, 'bios');
    assert.equal(vm.machine, 'pc-i440fx-7.2');
    const m = new Markers(vm.id);
    t.after(() => m.stop());
    t.diagnostic(`BIOS/pc: boot to login ${((await waitLogin(vm, t0)) / 1000).toFixed(1)} s`);
    await moveAndCheck(m, 'BIOS/pc live, shared storage', ['move-vm', 'deb-bios', '--to', 'host-b'], (s) =>
      t.diagnostic(s),
    );
    assert.equal((await show('deb-bios')).host, 'host-b');
    await ferryOk(['vm', 'stop', 'deb-bios', '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', 'deb-bios'], { lab: L.lab });
  },
);

test(
  'Debian on OVMF/q35 with cloud-init: login, serial console and screen, then live, shared-nothing and storage moves',
  { skip, timeout: 1_800_000 },
  async (t) => {
    await addImagesPool();
    const ud = path.join(L.dir, 'user-data');
    await fsp.writeFile(ud, USER_DATA);
    const t0 = Date.now();
    const folder = path.join(L.lab, 'shared', 'deb-uefi');
    const vm = await ferryOk<VmView>(
      [
        ...['vm', 'new', 'deb-uefi', '--host', 'host-a', '--image', image as string, '--memory', '512M'],
        ...['--firmware', 'uefi', '--machine', 'q35', '--cloud-init', ud, '--path', folder, '--start', '--json'],
      ],
      { lab: L.lab, timeoutMs: 300_000 },
    );
    assert.equal(vm.firmware, 'uefi');
    assert.equal(vm.machine, 'pc-q35-7.2');
    assert.equal(vm.display, 'vga');
    assert.deepEqual(vm.bootOrder, ['disk0']);
    assert.deepEqual(
      vm.disks.map((d) => [d.id, d.role, d.format]),
      [
        ['disk0', 'data', 'qcow2'],
        ['uefivars', 'uefi-vars', 'raw'],
      ],
    );
    assert.deepEqual(
      vm.cdroms.map((c) => [c.id, c.role, c.path]),
      [['cidata', 'cloud-init', path.join(folder, 'seed.iso')]],
    );
    const m = new Markers(vm.id);
    t.after(() => m.stop());
    t.diagnostic(`UEFI/q35: boot to login ${((await waitLogin(vm, t0)) / 1000).toFixed(1)} s`);

    // The screen: a PNG that is not blank (the VGA text console shows the login prompt).
    const png = path.join(L.dir, 'screen.png');
    await ferryOk(['vm', 'screenshot', 'deb-uefi', '--out', png], { lab: L.lab });
    assertNotBlankPng(await fsp.readFile(png));

    // The serial console read-write: Enter gets a fresh login prompt, a user name a password prompt.
    const cons = attachConsole('deb-uefi');
    // (The marker lines interleave with the guest's answers on the same port.)
    await cons.write('\n', /login: /);
    await cons.write('root\n', /Password: /);
    await cons.write('\n', /Login incorrect|login: /);

    await moveAndCheck(m, 'UEFI/q35 live, shared storage', ['move-vm', 'deb-uefi', '--to', 'host-b'], (s) =>
      t.diagnostic(s),
    );
    // The console followed the VM to host-b.
    await cons.waitErr(/now on host-b: reattached/);
    await cons.write('\n', /login: /);
    cons.stop();

    const local = path.join(hostData(L, 'host-a'), 'pools', 'local', 'deb-uefi');
    await moveAndCheck(
      m,
      'UEFI/q35 shared nothing',
      ['move-vm', 'deb-uefi', '--to', 'host-a', '--include-storage', '--storage-path', local],
      (s) => t.diagnostic(s),
    );
    let v = await show('deb-uefi');
    assert.equal(v.host, 'host-a');
    assert.ok(
      v.disks.every((d) => d.path.startsWith(local + '/')),
      'the disks and the variable store moved',
    );
    assert.equal(v.cdroms[0]?.path, path.join(local, 'seed.iso'), 'the seed moved with the folder');
    assert.ok(!fs.existsSync(folder), 'the source copies are gone');

    const back = path.join(L.lab, 'shared', 'deb-uefi-2');
    await moveAndCheck(m, 'UEFI/q35 storage migration', ['move-storage', 'deb-uefi', '--path', back], (s) =>
      t.diagnostic(s),
    );
    v = await show('deb-uefi');
    assert.ok(v.disks.every((d) => d.path.startsWith(back + '/')));
    assert.equal(v.state, 'running');
    await ferryOk(['vm', 'stop', 'deb-uefi', '--force'], { lab: L.lab });
    await ferryOk(['vm', 'rm', 'deb-uefi'], { lab: L.lab });
  },
);

test('vm import of a libvirt domain: two disks, a CD-ROM and a bridge NIC; it starts', async (t) => {
  const shared = path.join(L.lab, 'shared', 'libvirt');
  await fsp.mkdir(shared, { recursive: true });
  await createImage(path.join(shared, 'imp-a.qcow2'), 'qcow2', 64 << 20);
  await createImage(path.join(shared, 'imp-b.img'), 'raw', 32 << 20);
  await fsp.writeFile(path.join(shared, 'readme.txt'), 'hello\n');
  await run('genisoimage', ['-quiet', '-o', path.join(shared, 'tools.iso'), path.join(shared, 'readme.txt')]);
  const br = `fyimp${process.pid % 10000}`;
  await run('ip', ['link', 'add', br, 'type', 'bridge']);
  t.after(() => run('ip', ['link', 'del', br]).catch(() => undefined));
  await ferryOk(['switch', 'new', 'lan0', '--host', 'host-a', '--bridge', br], { lab: L.lab });
  const xml = path.join(L.dir, 'imp.xml');
  await fsp.writeFile(
    xml,
    `<domain type='kvm'>
  <name>imp1</name>
  <memory unit='MiB'>192</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='cdrom'/><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='${shared}/imp-a.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='${shared}/imp-b.img'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <source file='${shared}/tools.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>
    <interface type='bridge'>
      <mac address='52:54:00:0a:0b:0c'/><source bridge='${br}'/><model type='virtio'/>
    </interface>
    <graphics type='vnc' port='-1'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>`,
  );
  const r = await ferryOk<{ vm: VmView; notes: string[] }>(['vm', 'import', xml, '--host', 'host-a', '--json'], {
    lab: L.lab,
  });
  const v = await show('imp1');
  assert.deepEqual(r.vm.disks, v.disks);
  assert.equal(v.memoryMiB, 192);
  assert.equal(v.cpus, 2);
  assert.equal(v.machine, 'pc-i440fx-7.2');
  assert.equal(v.firmware, 'bios');
  assert.deepEqual(
    v.disks.map((d) => [d.path, d.format]),
    [
      [`${shared}/imp-a.qcow2`, 'qcow2'],
      [`${shared}/imp-b.img`, 'raw'],
    ],
  );
  assert.deepEqual(
    v.cdroms.map((c) => c.path),
    [`${shared}/tools.iso`],
  );
  assert.deepEqual(v.nics, [{ id: 'nic0', switch: 'lan0', mac: '52:54:00:0a:0b:0c' }]);
  assert.deepEqual(v.bootOrder, ['cd0', 'disk0']);
  assert.equal(v.display, 'vga');
  assert.ok(r.notes.some((n) => /channel/.test(n)) && r.notes.some((n) => /VNC port/.test(n)), r.notes.join('; '));
  const started = await ferryOk<VmView>(['vm', 'start', 'imp1', '--json'], { lab: L.lab });
  assert.equal(started.state, 'running');
  await ferryOk(['vm', 'stop', 'imp1', '--force'], { lab: L.lab });
  await ferryOk(['vm', 'rm', 'imp1'], { lab: L.lab });
  assert.ok(fs.existsSync(`${shared}/imp-a.qcow2`), 'vm rm keeps the disks it did not make');
  await ferryOk(['switch', 'rm', 'lan0', '--host', 'host-a'], { lab: L.lab });
});

test('bad input: a backing file outside the pools, an unreadable image, a missing ISO, malformed XML', async () => {
  const shared = path.join(L.lab, 'shared');
  const outside = path.join(L.dir, 'outside.qcow2');
  await createImage(outside, 'qcow2', 16 << 20);
  const overlay = path.join(shared, 'overlay.qcow2');
  await createImage(overlay, 'qcow2', 0, { backing: { path: outside, format: 'qcow2' } });
  const broken = path.join(shared, 'broken.qcow2');
  await fsp.writeFile(broken, Buffer.concat([Buffer.from('QFI\xfb', 'latin1'), Buffer.alloc(508, 0xff)]));
  const xml = path.join(L.dir, 'bad.xml');
  await fsp.writeFile(xml, "<domain type='kvm'><name>x</name><devices></domain>");
  const listing = async (): Promise<string[]> =>
    (await run('find', [L.lab, '-path', '*/run', '-prune', '-o', '-print'])).stdout.split('\n').sort();
  const filesBefore = await listing();
  const cases: Array<[string, string[], number, RegExp]> = [
    ['bad1', ['--image', overlay], 2, /outside every storage pool/],
    ['bad2', ['--image', broken], 2, /Cannot read image .*broken\.qcow2/],
    [
      'bad3',
      ['--image', image ?? overlay, '--cdrom', path.join(shared, 'missing.iso')],
      4,
      /missing\.iso: no such file/,
    ],
  ];
  for (const [name, args, code, re] of cases) {
    const r = await ferry(['vm', 'new', name, '--host', 'host-a', ...args], { lab: L.lab });
    assert.equal(r.code, code, `${name}: ${r.stderr}`);
    assert.match(r.stderr, re);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    assert.ok(!fs.existsSync(path.join(hostData(L, 'host-a'), 'pools', 'local', name)), `${name}: no folder left`);
  }
  const r = await ferry(['vm', 'import', xml, '--host', 'host-a'], { lab: L.lab });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /Cannot import the libvirt domain: it is not well-formed XML/);
  const list = await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab: L.lab });
  assert.deepEqual(
    list.filter((v) => v.name.startsWith('bad') || v.name === 'x'),
    [],
  );
  const changed = (await listing()).filter((f) => !filesBefore.includes(f) && !/ferry\.db|\.log$|events/.test(f));
  assert.deepEqual(changed, [], 'no file or folder left behind in the lab');
});

let poolAdded = false;
/** The cached Debian image's folder as a pool of both hosts: --image reads only from pools. */
async function addImagesPool(): Promise<void> {
  if (poolAdded) return;
  for (const h of ['host-a', 'host-b'])
    await ferryOk(['pool', 'add', 'images', '--host', h, '--path', debianGuestDir()], { lab: L.lab });
  poolAdded = true;
}

/** `ferry vm console NAME --interactive` with piped input, as a person would type. */
function attachConsole(name: string): {
  write(s: string, expect: RegExp): Promise<void>;
  waitErr(re: RegExp): Promise<void>;
  stop(): void;
} {
  const child = spawn(path.join(REPO_ROOT, 'bin', 'ferry'), ['vm', 'console', name, '--interactive'], {
    env: { ...process.env, FERRY_LAB: L.lab },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  consoleProc = child;
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d.replace(/\r/g, '')));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const waitText = async (get: () => string, from: number, re: RegExp, what: string): Promise<void> => {
    const until = Date.now() + 60_000;
    while (!re.test(get().slice(from))) {
      if (Date.now() > until) throw new Error(`${what}: ${re} not seen; got ${get().slice(-400)} / ${err}`);
      await sleep(200);
    }
  };
  return {
    async write(s, expect) {
      const from = out.length;
      await waitText(() => err, 0, /Connected to the serial console/, 'console attach');
      child.stdin.write(s);
      await waitText(() => out, from, expect, `answer to ${JSON.stringify(s)}`);
    },
    waitErr: (re) => waitText(() => err, 0, re, 'console notice'),
    stop() {
      child.stdin.write(Buffer.from([0x1d]));
    },
  };
}

/** A PNG whose pixels are not all one value (decoded far enough to see that). */
function assertNotBlankPng(buf: Buffer): void {
  assert.equal(buf.subarray(0, 8).toString('hex'), '89504e470d0a1a0a', 'a PNG');
  const idat: Buffer[] = [];
  for (let o = 8; o < buf.length;) {
    const len = buf.readUInt32BE(o);
    if (buf.toString('latin1', o + 4, o + 8) === 'IDAT') idat.push(buf.subarray(o + 8, o + 8 + len));
    o += 12 + len;
  }
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const lit = raw.filter((b) => b !== 0).length;
  assert.ok(lit > raw.length / 1000, `the screen is not blank (${lit} of ${raw.length} bytes lit)`);
}
