// A storage move's kept copies (kinds/storage-resume.ts): which path the plan lets a retry take,
// what the VM's next move that does not resume them deletes, and the 24 h sweep. The copy
// itself runs on real QEMU: test/e2e/resume-move.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  dropKeptCopies,
  keptCopyAt,
  storageBitmapOf,
  storageKeyOf,
  sweepKeptCopies,
} from '../../src/migration/kinds/storage-resume.js';
import { moveKeyOf, RESUME_MAX_AGE_MS } from '../../src/migration/resume-marker.js';
import { keepImage, readMarker, STORAGE_DIR } from '../../src/migration/resume-store.js';
import { tempDir } from '../helpers.js';

async function kept(t: Parameters<typeof tempDir>[0], now = new Date()) {
  const dir = await tempDir(t);
  const data = path.join(dir, 'data');
  const files = ['disk0', 'disk1'].map((d) => path.join(dir, 'pool', 'moved', `${d}.qcow2`));
  await fsp.mkdir(path.dirname(files[0]!), { recursive: true });
  for (const [i, f] of files.entries()) {
    await fsp.writeFile(f, 'partial');
    await keepImage(
      data,
      {
        moveKey: storageKeyOf('vm-1', 'host-a'),
        vmId: 'vm-1',
        source: 'host-a',
        diskId: `disk${i}`,
        path: f,
        virtualSizeBytes: 1048576,
        format: 'qcow2',
      },
      now,
      STORAGE_DIR,
    );
  }
  return { data, files };
}

test("a storage move's key is its own: no shared-nothing move's key, and one per VM and host", () => {
  assert.notEqual(storageKeyOf('vm-1', 'host-a'), moveKeyOf('vm-1', 'host-a', 'host-b'));
  assert.notEqual(storageKeyOf('vm-1', 'host-a'), storageKeyOf('vm-2', 'host-a'));
  assert.match(storageBitmapOf('vm-1', 'host-a'), /^ferry-resume-[0-9a-f]{16}$/);
});

test('the plan lets a move take a file only where the marker of that very VM disk names it', async (t) => {
  const { data, files } = await kept(t);
  const at = keptCopyAt(data, 'vm-1');
  assert.equal(await at('disk0', files[0]!), true);
  assert.equal(await at('disk0', files[1]!), false, "another disk's kept copy");
  assert.equal(await at('disk2', files[0]!), false, 'a disk with no marker');
  assert.equal(await keptCopyAt(data, 'vm-2')('disk0', files[0]!), false, "another VM's");
  // Kept for a shared-nothing move's destination: not a storage move's to take.
  assert.equal(await readMarker(data, 'vm-1', 'disk0'), null);
});

test("a move that does not resume deletes the kept copies, never one that is the VM's disk by now", async (t) => {
  const { data, files } = await kept(t);
  const gone = await dropKeptCopies(data, { id: 'vm-1', disks: [{ path: files[1]! }] });
  assert.deepEqual(gone, [files[0]]);
  assert.equal(fs.existsSync(files[0]!), false);
  assert.equal(fs.existsSync(files[1]!), true, "the VM's disk stays");
  assert.equal(await readMarker(data, 'vm-1', 'disk0', STORAGE_DIR), null);
  assert.equal(await readMarker(data, 'vm-1', 'disk1', STORAGE_DIR), null, 'both markers go');
});

test('a move that resumes some disks keeps theirs', async (t) => {
  const { data, files } = await kept(t);
  assert.deepEqual(await dropKeptCopies(data, { id: 'vm-1', disks: [] }, new Set(['disk1'])), [files[0]]);
  assert.ok(await readMarker(data, 'vm-1', 'disk1', STORAGE_DIR));
  assert.equal(fs.existsSync(files[1]!), true);
});

test('the sweep deletes kept copies past 24 h, keeps young ones and files in use', async (t) => {
  const young = await kept(t);
  assert.equal(await sweepKeptCopies(young.data, () => false), 0);
  assert.ok(young.files.every((f) => fs.existsSync(f)));
  const old = await kept(t, new Date(Date.now() - RESUME_MAX_AGE_MS - 60_000));
  assert.equal(await sweepKeptCopies(old.data, (p) => p === old.files[1]), 1);
  assert.equal(fs.existsSync(old.files[0]!), false);
  assert.equal(fs.existsSync(old.files[1]!), true, 'a registered VM uses it');
  assert.equal(await readMarker(old.data, 'vm-1', 'disk1', STORAGE_DIR), null, 'its marker goes');
});
