// Which files the agent checks QEMU holds after its start (src/qemu/opened-files.ts), and the
// check against a process's descriptors (this test's own process stands in for QEMU).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { blockdevFiles, checkOpenedFiles, heldFiles } from '../../src/qemu/opened-files.js';
import { buildArgv } from '../../src/qemu/argv.js';
import { newVmId, parseVmSpec } from '../../src/vm/spec.js';
import { refusedWith, tempDir } from '../helpers.js';

const paths = { qmpSocket: '/run/q.sock', serialLog: '/run/s.log', pidFile: '/run/p' };

test("blockdevFiles: every file node's file, the pinned backing chain's too, never the agent's descriptors", () => {
  const args = [
    '-blockdev',
    JSON.stringify({ driver: 'file', filename: '/pool/vm/disk.qcow2', 'node-name': 'd0-file' }),
    '-blockdev',
    JSON.stringify({ driver: 'qcow2', file: 'd0-file', 'node-name': 'd0', backing: 'b0' }),
    '-blockdev',
    JSON.stringify({ driver: 'file', filename: '/pool/base.qcow2', 'node-name': 'b0-file', 'read-only': true }),
    '-blockdev',
    JSON.stringify({ driver: 'file', filename: '/pool/vm/disk.qcow2', 'node-name': 'again' }),
    '-kernel',
    '/proc/self/fd/3',
    '-blockdev',
    JSON.stringify({ driver: 'file', filename: '/proc/self/fd/4', 'node-name': 'cd' }),
    '-blockdev',
    JSON.stringify({ driver: 'nbd', server: { type: 'inet', host: '10.0.0.1', port: '1' }, export: 'x' }),
    '{not json',
  ];
  assert.deepEqual(blockdevFiles(args), ['/pool/vm/disk.qcow2', '/pool/base.qcow2']);
});

test("blockdevFiles reads a VM's real command line: its disks, and with UEFI its variables file", () => {
  const spec = parseVmSpec({
    name: 'of1',
    id: newVmId(),
    memoryMiB: 256,
    cpus: 1,
    firmware: 'uefi',
    disks: [
      { id: 'disk0', path: '/pool/of1/disk0.qcow2', format: 'qcow2' },
      { id: 'disk1', path: '/pool/of1/disk1.raw', format: 'raw' },
      { id: 'vars', path: '/pool/of1/vars.fd', format: 'raw', role: 'uefi-vars' },
    ],
    boot: { kind: 'disk' },
    configPath: '/pool/of1',
    checkpointPath: '/pool/of1',
    pagingPath: '/pool/of1',
  });
  const ovmf = { code: '/usr/share/OVMF/OVMF_CODE.fd', vars: '/usr/share/OVMF/OVMF_VARS.fd' };
  const argv = buildArgv(spec, { accel: 'tcg', paths, ovmf });
  assert.deepEqual(blockdevFiles(argv).sort(), [ovmf.code, ...spec.disks.map((d) => d.path)].sort());
});

test('checkOpenedFiles: a file the process holds passes; one replaced since, or a link, is refused', async (t) => {
  const dir = await tempDir(t);
  const pools = [{ name: 'p', kind: 'local' as const, path: dir }];
  const file = path.join(dir, 'disk.img');
  await fsp.writeFile(file, 'a');
  const held = await fsp.open(file, 'r');
  t.after(() => held.close());
  const who = { vm: 'v', host: 'h' };
  assert.ok((await heldFiles(process.pid)).size > 0);
  await checkOpenedFiles(process.pid, [file, '/usr/share/not-in-a-pool'], pools, who);
  // Another file now at the path: the process holds the old one.
  await fsp.rename(file, `${file}.old`);
  await fsp.writeFile(file, 'b');
  await assert.rejects(
    checkOpenedFiles(process.pid, [file], pools, who),
    refusedWith('E_PATH_SWAPPED', /QEMU opened .*disk\.img but it is not the file the agent checked/),
  );
  // A link at the path, even to the very file held: refused as a link.
  await fsp.rm(file);
  await fsp.symlink(`${file}.old`, file);
  await assert.rejects(checkOpenedFiles(process.pid, [file], pools, who), refusedWith('E_PATH_LINK', /symbolic link/));
});

test("a pinned chain: the VM's own checkpoint layers open read-write from the start, others read-only", () => {
  const spec = parseVmSpec({
    name: 'of2',
    id: newVmId(),
    memoryMiB: 256,
    cpus: 1,
    disks: [{ id: 'disk0', path: '/pool/of2/checkpoints/active.qcow2', format: 'qcow2' }],
    boot: { kind: 'disk' },
    configPath: '/pool/of2',
    checkpointPath: '/pool/of2',
    pagingPath: '/pool/of2',
  });
  const chain = [
    { path: '/pool/of2/checkpoints/active.qcow2', format: 'qcow2' },
    { path: '/pool/of2/disk0.qcow2', format: 'qcow2', writable: true },
    { path: '/pool/templates/debian.qcow2', format: 'qcow2' },
  ];
  const argv = buildArgv(spec, { accel: 'tcg', paths, chains: new Map([['disk0', chain]]) });
  const nodes = argv
    .flatMap((a, i) => (argv[i - 1] === '-blockdev' ? [JSON.parse(a) as Record<string, unknown>] : []))
    .filter((n) => n.driver === 'file');
  const opts = (f: string) => {
    const n = nodes.find((x) => x.filename === f)!;
    return [n['read-only'], n['auto-read-only']];
  };
  // Read-write without a reopen by path later (a commit into it); the template only when asked.
  assert.deepEqual(opts('/pool/of2/disk0.qcow2'), [false, false]);
  assert.deepEqual(opts('/pool/templates/debian.qcow2'), [undefined, true]);
  assert.deepEqual(blockdevFiles(argv).sort(), chain.map((c) => c.path).sort());
});
