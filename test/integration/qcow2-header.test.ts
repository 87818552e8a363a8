// A qcow2 chain read from its headers says what `qemu-img info` says (qemu/qcow2-header.ts), for
// the images qemu-img makes; everything else is left to qemu-img (null), and a crafted header
// is never read past what QEMU itself would accept.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import { parseQcow2Header, readQcow2Info, readRawInfo } from '../../src/qemu/qcow2-header.js';
import { probeImage } from '../../src/vm/image.js';
import { imageInfo } from '../../src/qemu/img.js';
import type { PoolDef } from '../../src/storage/pools.js';

let dir = '';

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-qcow2h-'));
});
after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function img(...args: string[]): Promise<void> {
  await run('qemu-img', args, { timeoutMs: 30_000 });
}

interface Info {
  format: string;
  'virtual-size': number;
  'actual-size': number;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  'dirty-flag'?: boolean;
  dirty?: boolean;
}

async function qemuInfo(file: string, format: string): Promise<Info> {
  const { stdout } = await run('qemu-img', ['info', '--output=json', '-U', '-f', format, file], {
    timeoutMs: 30_000,
  });
  const i = JSON.parse(stdout) as Info;
  return {
    format: i.format,
    'virtual-size': i['virtual-size'],
    'actual-size': i['actual-size'],
    ...(i['backing-filename'] ? { 'backing-filename': i['backing-filename'] } : {}),
    ...(i['backing-filename-format'] ? { 'backing-filename-format': i['backing-filename-format'] } : {}),
    dirty: i['dirty-flag'] ?? false,
  };
}

test('the header says what qemu-img info says, for the qcow2 images qemu-img makes', async () => {
  const base = path.join(dir, 'base.qcow2');
  const raw = path.join(dir, 'base.raw');
  await img('create', '-q', '-f', 'qcow2', base, '1G');
  await img('create', '-q', '-f', 'raw', raw, '64M');
  await run('dd', ['if=/dev/urandom', `of=${raw}`, 'bs=1M', 'count=3', 'conv=notrunc'], { timeoutMs: 30_000 });
  const cases: Array<[string, string[]]> = [
    ['plain.qcow2', ['-o', 'cluster_size=65536']],
    ['abs-backing.qcow2', ['-b', base, '-F', 'qcow2']],
    ['rel-backing.qcow2', ['-b', 'base.qcow2', '-F', 'qcow2']],
    ['raw-backing.qcow2', ['-b', raw, '-F', 'raw']],
    ['v2.qcow2', ['-o', 'compat=0.10', '-b', base, '-F', 'qcow2']],
    ['big-cluster.qcow2', ['-o', 'cluster_size=2M', '-b', base, '-F', 'qcow2']],
    ['small-cluster.qcow2', ['-o', 'cluster_size=512', '-b', base, '-F', 'qcow2']],
    ['lazy.qcow2', ['-o', 'lazy_refcounts=on']],
    ['zstd.qcow2', ['-o', 'compression_type=zstd', '-b', base, '-F', 'qcow2']],
    ['extended-l2.qcow2', ['-o', 'extended_l2=on', '-b', base, '-F', 'qcow2']],
  ];
  for (const [name, opts] of cases) {
    const file = path.join(dir, name);
    await img('create', '-q', '-f', 'qcow2', ...opts, file, '1G');
    await img('bitmap', '--add', file, 'b0').catch(() => undefined); // a v2 image has no bitmaps
    // Data written: an allocated size other than the header's.
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1M 2M', file], { timeoutMs: 30_000 });
    assert.deepEqual(await readQcow2Info(file), await qemuInfo(file, 'qcow2'), name);
    // imageInfo of a held image (-U) reads the header; without -U qemu-img is asked (its lock check).
    assert.deepEqual(
      await imageInfo(file, { forceShare: true, format: 'qcow2' }),
      await imageInfo(file, { format: 'qcow2' }),
      `${name}: imageInfo`,
    );
  }
  assert.deepEqual(await readRawInfo(raw), await qemuInfo(raw, 'raw'), 'raw');
  // Sizes that are not whole sectors, as QEMU counts them: a raw file's rounded up, a qcow2's down.
  const odd = path.join(dir, 'odd.raw');
  await fsp.writeFile(odd, Buffer.alloc(1000, 1));
  assert.deepEqual(await readRawInfo(odd), await qemuInfo(odd, 'raw'), 'a 1000-byte raw file');
  const oddQ = path.join(dir, 'odd.qcow2');
  await img('create', '-q', '-f', 'qcow2', oddQ, '1M');
  const oh = await fsp.open(oddQ, 'r+');
  const size = Buffer.alloc(8);
  size.writeBigUInt64BE(1000n);
  await oh.write(size, 0, 8, 24);
  await oh.close();
  assert.deepEqual(await readQcow2Info(oddQ), await qemuInfo(oddQ, 'qcow2'), 'a qcow2 of 1000 bytes');
  assert.deepEqual(await imageInfo(raw, { forceShare: true, format: 'raw' }), await imageInfo(raw, { format: 'raw' }));
});

test('left to qemu-img: encryption, an external data file, no backing format, not qcow2, a link, no file', async () => {
  // Encryption marked in the header (crypt_method 1, AES): qemu-img says so; the header reader leaves it.
  const enc = path.join(dir, 'enc.qcow2');
  await img('create', '-q', '-f', 'qcow2', enc, '16M');
  const fh = await fsp.open(enc, 'r+');
  await fh.write(Buffer.from([0, 0, 0, 1]), 0, 4, 32);
  await fh.close();
  assert.equal(
    (
      JSON.parse((await run('qemu-img', ['info', '--output=json', enc], { timeoutMs: 30_000 })).stdout) as {
        encrypted?: boolean;
      }
    ).encrypted,
    true,
  );
  assert.equal(await readQcow2Info(enc), null, 'encrypted');
  const ext = path.join(dir, 'ext.qcow2');
  await img('create', '-q', '-f', 'qcow2', '-o', `data_file=${path.join(dir, 'ext.data')}`, ext, '16M');
  assert.equal(await readQcow2Info(ext), null, 'an external data file');
  const base = path.join(dir, 'b.qcow2');
  const noFmt = path.join(dir, 'nofmt.qcow2');
  await img('create', '-q', '-f', 'qcow2', base, '16M');
  await img('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', noFmt, '16M');
  // A backing named without its format (qemu-img no longer writes one): its extension, the
  // first, made the end mark.
  const nf = await fsp.open(noFmt, 'r+');
  const head = Buffer.alloc(4096);
  await nf.read(head, 0, 4096, 0);
  const extAt = head.readUInt32BE(100);
  assert.equal(head.readUInt32BE(extAt), 0xe2792aca);
  await nf.write(Buffer.alloc(4), 0, 4, extAt);
  await nf.close();
  assert.equal((await qemuInfo(noFmt, 'qcow2'))['backing-filename'], base);
  assert.equal(await readQcow2Info(noFmt), null, 'no backing format');
  // A backing name that is not UTF-8: qemu-img's JSON and QEMU read it differently.
  const bad = path.join(dir, 'badname.qcow2');
  await img('create', '-q', '-u', '-f', 'qcow2', '-b', path.join(dir, 'bXaXXseXXX.raw'), '-F', 'raw', bad, '16M');
  const bh = await fsp.open(bad, 'r+');
  const bb = Buffer.alloc(4096);
  await bh.read(bb, 0, 4096, 0);
  const at = Number(bb.readBigUInt64BE(8));
  const len = bb.readUInt32BE(16);
  const nameBytes = Buffer.from(bb.subarray(at, at + len));
  const x = nameBytes.indexOf('bXaXXseXXX');
  Buffer.from([0x62, 0xff, 0x61, 0xc0, 0x80, 0x73, 0x65, 0xed, 0xa0, 0x80]).copy(nameBytes, x);
  await bh.write(nameBytes, 0, len, at);
  await bh.close();
  assert.equal(await readQcow2Info(bad), null, 'a backing name that is not UTF-8');
  const raw = path.join(dir, 'r.raw');
  await fsp.writeFile(raw, Buffer.alloc(65536));
  assert.equal(await readQcow2Info(raw), null, 'a raw file');
  const link = path.join(dir, 'link.qcow2');
  await fsp.symlink(base, link);
  assert.equal(await readQcow2Info(link), null, 'a link');
  assert.equal(await readRawInfo(link), null, 'a link (raw)');
  assert.equal(await readQcow2Info(path.join(dir, 'none.qcow2')), null, 'no file');
  assert.equal(await readRawInfo(path.join(dir, 'none.raw')), null, 'no file (raw)');
});

test("a VM disk's chain probed from the headers is the chain qemu-img's probe finds", async () => {
  const pools: PoolDef[] = [{ name: 'p', kind: 'local', path: dir }];
  const a = path.join(dir, 'ca.qcow2');
  const b = path.join(dir, 'cb.qcow2');
  const c = path.join(dir, 'cc.qcow2');
  await img('create', '-q', '-f', 'qcow2', a, '1G');
  await img('create', '-q', '-f', 'qcow2', '-b', 'ca.qcow2', '-F', 'qcow2', b, '1G');
  await img('create', '-q', '-f', 'qcow2', '-b', b, '-F', 'qcow2', c, '1G');
  const probed = await probeImage(c, { pools, host: 'h', format: 'qcow2', forceShare: true });
  assert.deepEqual(
    probed.chain.map((f) => [f.path, f.format]),
    [
      [c, 'qcow2'],
      [b, 'qcow2'],
      [a, 'qcow2'],
    ],
  );
  // Unpinned (a VM's qcow2 disk is checked so; an image brought in): the same chain, and a raw
  // file is still qemu-img's to name.
  const unpinned = await probeImage(c, { pools, host: 'h', forceShare: true });
  assert.deepEqual(unpinned, probed);
  const r = path.join(dir, 'cr.raw');
  await fsp.writeFile(r, Buffer.alloc(1 << 20));
  assert.deepEqual(
    (await probeImage(r, { pools, host: 'h' })).chain.map((f) => f.format),
    ['raw'],
  );
  // Outside every pool: refused before any header is read, as before.
  await assert.rejects(
    probeImage(c, { pools: [{ name: 'q', kind: 'local', path: '/nonexistent' }], host: 'h', format: 'qcow2' }),
    /pool/,
  );
});

/** A v3 header: 64 KiB clusters, 104 bytes, then `ext` and an end mark, then a backing name. */
function header(o: {
  backing?: string;
  ext?: Buffer;
  incompatible?: bigint;
  crypt?: number;
  nameLen?: number;
}): Buffer {
  const b = Buffer.alloc(4096);
  b.writeUInt32BE(0x514649fb, 0);
  b.writeUInt32BE(3, 4);
  b.writeUInt32BE(16, 20);
  b.writeBigUInt64BE(1n << 30n, 24);
  b.writeUInt32BE(o.crypt ?? 0, 32);
  b.writeBigUInt64BE(o.incompatible ?? 0n, 72);
  b.writeUInt32BE(4, 96);
  b.writeUInt32BE(104, 100);
  let at = 104;
  if (o.ext) {
    o.ext.copy(b, at);
    at += o.ext.length;
  }
  at += 8; // the end mark (zeroes)
  if (o.backing !== undefined) {
    b.writeBigUInt64BE(BigInt(at), 8);
    b.writeUInt32BE(o.nameLen ?? Buffer.byteLength(o.backing), 16);
    b.write(o.backing, at);
  }
  return b;
}

function refcountOrder(b: Buffer, order: number): Buffer {
  b.writeUInt32BE(order, 96);
  return b;
}

function clusterBits(b: Buffer, bits: number): Buffer {
  b.writeUInt32BE(bits, 20);
  return b;
}

/** A 112-byte header whose compression type byte is `type`, with the incompatible bits `bits`. */
function compression(b: Buffer, type: number, bits: bigint): Buffer {
  b.writeUInt32BE(112, 100);
  b.writeUInt8(type, 104);
  b.writeBigUInt64BE(bits, 72);
  return b;
}

function ext(type: number, data: Buffer, declared = data.length): Buffer {
  const e = Buffer.alloc(8 + Math.ceil(data.length / 8) * 8);
  e.writeUInt32BE(type, 0);
  e.writeUInt32BE(declared, 4);
  data.copy(e, 8);
  return e;
}

test('a crafted header: read only as QEMU reads it, anything odd left to qemu-img', () => {
  const fmt = ext(0xe2792aca, Buffer.from('qcow2'));
  assert.deepEqual(parseQcow2Header(header({ backing: '/p/base.qcow2', ext: fmt })), {
    size: 1 << 30,
    dirty: false,
    backing: { offset: 128, length: 13 },
    backingFormat: 'qcow2',
  });
  assert.deepEqual(parseQcow2Header(header({ incompatible: 1n })), { size: 1 << 30, dirty: true, backing: null });
  const odd: Array<[string, Buffer]> = [
    ['an unknown incompatible feature', header({ incompatible: 1n << 5n })],
    ['a corrupt image', header({ incompatible: 1n << 1n })],
    ['an external data file bit', header({ incompatible: 1n << 2n })],
    ['encryption', header({ crypt: 1 })],
    ["a backing name past QEMU's 1023 bytes", header({ backing: '/p/b', ext: fmt, nameLen: 1024 })],
    [
      'an extension running past the backing name',
      header({ backing: '/p/b', ext: ext(0xe2792aca, Buffer.from('qcow2'), 64) }),
    ],
    ['an unknown extension', header({ ext: ext(0x12345678, Buffer.from('x')) })],
    ['a data file extension', header({ ext: ext(0x44415441, Buffer.from('/etc/shadow')) })],
    [
      'a backing format that is no format name',
      header({ backing: '/p/b', ext: ext(0xe2792aca, Buffer.from('json:{}')) }),
    ],
    ['too short', header({}).subarray(0, 100)],
    ['not qcow2', Buffer.alloc(4096)],
    ['refcounts wider than 64 bits', refcountOrder(header({}), 7)],
    ['extended L2 in 8 KiB clusters', clusterBits(header({ incompatible: 1n << 4n }), 13)],
    ['the compression type bit with zlib', header({ incompatible: 1n << 3n })],
    ['an unknown compression type', compression(header({}), 2, 0n)],
    ['zstd without its feature bit', compression(header({}), 1, 0n)],
  ];
  for (const [what, b] of odd) assert.equal(parseQcow2Header(b), null, what);
  assert.notEqual(parseQcow2Header(compression(header({}), 1, 1n << 3n)), null, 'zstd with its bit');
  assert.notEqual(parseQcow2Header(clusterBits(header({ incompatible: 1n << 4n }), 14)), null, 'extended L2, 16 KiB');
  const bad = header({});
  bad.writeUInt32BE(30, 20); // cluster bits past QEMU's 2 MiB
  assert.equal(parseQcow2Header(bad), null, 'cluster bits');
  const far = header({ backing: '/p/b', ext: fmt });
  far.writeBigUInt64BE(1n << 17n, 8); // past the first cluster
  assert.equal(parseQcow2Header(far), null, 'a backing name past the first cluster');
});
