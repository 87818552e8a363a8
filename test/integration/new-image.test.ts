// A move's new image made without qemu-img (issue 17 item 2): the agent claims the file and
// sizes a raw one (its first block written); QEMU formats a qcow2 one on the node it opens
// (blockdev-create).
// The result is the image `qemu-img create` makes, and a failed format leaves no node or job.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { StorageDaemon } from '../../src/qemu/storage-daemon.js';
import { addImageNode, newImage } from '../../src/migration/block.js';
import { claimFile } from '../../src/migration/claim.js';
import { createImage, sizeRawImage, type ImageFormat } from '../../src/qemu/img.js';
import { tempDir, testPools } from '../helpers.js';

const run = promisify(execFile);
const GiB = 1024 ** 3;

type Info = Record<string, unknown> & { 'format-specific'?: { data?: Record<string, unknown> } };
const info = async (file: string): Promise<Info> =>
  JSON.parse((await run('qemu-img', ['info', '-U', '--output=json', file])).stdout) as Info;

test('which new images QEMU or the agent make, and which qemu-img still does', () => {
  const made = (format: ImageFormat, o: Parameters<typeof newImage>[3]) => {
    const m = newImage('/x', format, GiB, o);
    return { fill: m.claim.fill !== undefined, forQemu: m.claim.forQemu === true, qcow2: m.createQcow2Bytes };
  };
  // raw: sized through the handle (a fill, no process), wherever it is made
  assert.deepEqual(made('raw', { inQemu: true }), { fill: true, forQemu: true, qcow2: undefined });
  assert.deepEqual(made('raw', { inQemu: false }), { fill: true, forQemu: true, qcow2: undefined });
  // qcow2: left empty for the QEMU that opens it to format
  assert.deepEqual(made('qcow2', { inQemu: true }), { fill: false, forQemu: true, qcow2: GiB });
  // qemu-img: an arriving VM's qcow2 (its QEMU is not started yet), an overlay, other formats
  assert.deepEqual(made('qcow2', { inQemu: false }), { fill: true, forQemu: false, qcow2: undefined });
  const backing = { path: '/base.qcow2', format: 'qcow2' as const };
  assert.deepEqual(made('qcow2', { inQemu: true, backing }), { fill: true, forQemu: false, qcow2: undefined });
  assert.deepEqual(made('vhdx', { inQemu: true }), { fill: true, forQemu: false, qcow2: undefined });
});

/** A disk daemon (QEMU without a guest, as a stopped VM's copy runs) and the pool it may open files in. */
async function daemonIn(t: TestContext, tag: string) {
  const dir = await tempDir(t, 'ferry-newimg-');
  const pools = testPools(dir);
  const roots = pools.map((p) => p.path);
  const daemon = await StorageDaemon.start(tag, [], path.join(dir, 'qemu'));
  t.after(() => daemon.quit());
  return { pools, roots, daemon };
}

test('a claimed empty file formatted by QEMU is the qcow2 image qemu-img creates; a raw one is sized', async (t) => {
  const { pools, roots, daemon } = await daemonIn(t, 'newimg');
  const held = { pid: daemon.pid, pools, vm: 'newimg', host: 'host-a' };

  const byQemu = path.join(roots[0]!, 'by-qemu.qcow2');
  await claimFile(roots, byQemu, 'a test disk', { forQemu: true });
  assert.equal((await fsp.stat(byQemu)).size, 0);
  await addImageNode(daemon.qmp, 'q', byQemu, 'qcow2', false, { held, createQcow2Bytes: 10 * GiB });
  const byImg = path.join(roots[0]!, 'by-img.qcow2');
  await createImage(byImg, 'qcow2', 10 * GiB);
  const [a, b] = [await info(byQemu), await info(byImg)];
  assert.equal(a.format, 'qcow2');
  assert.equal(a['virtual-size'], 10 * GiB);
  assert.equal(a['cluster-size'], b['cluster-size']);
  assert.deepEqual(a['format-specific']?.data, b['format-specific']?.data, 'same qcow2 options as qemu-img create');
  assert.deepEqual(await daemon.qmp.execute('query-jobs'), [], 'the create job was dismissed');

  // The node is the image: what QEMU writes through it reads back, and the image checks clean.
  const nodes = (await daemon.qmp.execute('query-named-block-nodes', { flat: true })).map((n) => n['node-name']);
  assert.deepEqual(nodes.sort(), ['q', 'q-file']);
  await daemon.qmp.execute('blockdev-del', { 'node-name': 'q' });
  await daemon.qmp.execute('blockdev-del', { 'node-name': 'q-file' });
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1G 1M', byQemu]);
  const read = await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 1G 1M', '-c', 'read -P 0 0 1M', byQemu]);
  assert.doesNotMatch(read.stdout, /Pattern verification failed/);
  await run('qemu-img', ['check', '-f', 'qcow2', byQemu]);

  const raw = path.join(roots[0]!, 'sized.raw');
  await claimFile(roots, raw, 'a test disk', { forQemu: true, fill: (fd) => sizeRawImage(fd, 2 * GiB) });
  await addImageNode(daemon.qmp, 'r', raw, 'raw', false, { held });
  const rawByImg = path.join(roots[0]!, 'by-img.raw');
  await createImage(rawByImg, 'raw', 2 * GiB);
  const [st, ref] = [await fsp.stat(raw), await fsp.stat(rawByImg)];
  assert.equal(st.size, 2 * GiB);
  assert.equal(st.blocks, ref.blocks, 'sparse but for the first block, as qemu-img create makes it');
  for (const [size, want] of [
    [1000, 1024],
    [512, 512],
  ] as const) {
    const f = path.join(roots[0]!, `odd-${size}.raw`);
    await claimFile(roots, f, 'a test disk', { fill: (fd) => sizeRawImage(fd, size) });
    const g = path.join(roots[0]!, `odd-${size}-img.raw`);
    await createImage(g, 'raw', size);
    assert.equal((await fsp.stat(f)).size, want, `${size} bytes rounded as qemu-img does`);
    assert.equal((await fsp.stat(g)).size, want);
  }
});

test('a format QEMU refuses fails with its reason and leaves no node and no job', async (t) => {
  const { roots, daemon } = await daemonIn(t, 'newimg2');
  const file = path.join(roots[0]!, 'odd.qcow2');
  await claimFile(roots, file, 'a test disk', { forQemu: true });
  await assert.rejects(
    addImageNode(daemon.qmp, 'o', file, 'qcow2', false, { createQcow2Bytes: 1000 }),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, 'E_BLOCK');
      assert.match(err.message, /^Cannot create the image .*odd\.qcow2: QEMU says .*512/);
      return true;
    },
  );
  assert.deepEqual(await daemon.qmp.execute('query-named-block-nodes', { flat: true }), []);
  assert.deepEqual(await daemon.qmp.execute('query-jobs'), []);
});

test('a format cancelled while QEMU runs it leaves no job, and the file node goes with it', async (t) => {
  const { roots, daemon } = await daemonIn(t, 'newimg3');
  const file = path.join(roots[0]!, 'cut.qcow2');
  await claimFile(roots, file, 'a test disk', { forQemu: true });
  const ac = new AbortController();
  const adding = addImageNode(daemon.qmp, 'c', file, 'qcow2', false, {
    signal: ac.signal,
    createQcow2Bytes: 64 * GiB,
  });
  // Aborted as soon as QEMU has the create job (its first status change): here it is then still
  // running, and is cancelled (created, running, aborting, concluded); had it concluded first,
  // the node is removed all the same.
  await daemon.qmp.waitEvent((e) => e.event === 'JOB_STATUS_CHANGE' && e.data?.id === 'c-file-create', {
    timeoutMs: 10_000,
  });
  ac.abort(new Error('cancelled by the test'));
  await assert.rejects(adding);
  assert.deepEqual(await daemon.qmp.execute('query-jobs'), [], 'no job left');
  assert.deepEqual(await daemon.qmp.execute('query-named-block-nodes', { flat: true }), [], 'no node left');
});

test('a raw size past an exact byte count is refused, and the file stays empty', async (t) => {
  const dir = await tempDir(t, 'ferry-newimg-');
  const file = path.join(dir, 'huge.raw');
  await assert.rejects(
    claimFile([dir], file, 'a test disk', { fill: (fd) => sizeRawImage(fd, Number.MAX_SAFE_INTEGER) }),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, 'E_INVALID_INPUT');
      assert.match(err.message, /^Cannot size a raw image at 9007199254740991 bytes: not a byte count/);
      return true;
    },
  );
  assert.equal((await fsp.stat(file)).size, 0);
});
