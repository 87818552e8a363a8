import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  answerOffers,
  keepEntries,
  keepImages,
  sweepKeptImages,
  takeOver,
} from '../../src/migration/incoming-resume.js';
import { moveKeyOf } from '../../src/migration/resume-marker.js';
import { keepImage, readMarker } from '../../src/migration/resume-store.js';
import type { IncomingRequest } from '../../src/api/peer-actions.js';
import { tempDir } from '../helpers.js';

type Storage = NonNullable<IncomingRequest['storage']>;

async function setup(t: Parameters<typeof tempDir>[0]) {
  const dir = await tempDir(t);
  const data = path.join(dir, 'data');
  const img = path.join(dir, 'pool', 'disk0.qcow2');
  await fsp.mkdir(path.dirname(img), { recursive: true });
  await fsp.writeFile(img, 'partial');
  const key = moveKeyOf('vm-1', 'host-a', 'host-b');
  const st: Storage = {
    disks: [{ id: 'disk0', path: img, format: 'qcow2', virtualSizeBytes: 1048576, allocatedBytes: 7 }],
    dirs: [],
    files: [],
    resumeKey: key,
  };
  return { data, img, key, st };
}

test('the move key is the VM, source and destination: a plain retry finds it, another destination does not', () => {
  assert.equal(moveKeyOf('vm-1', 'host-a', 'host-b'), moveKeyOf('vm-1', 'host-a', 'host-b'));
  assert.notEqual(moveKeyOf('vm-1', 'host-a', 'host-b'), moveKeyOf('vm-1', 'host-a', 'host-c'));
  assert.match(moveKeyOf('vm-1', 'host-a', 'host-b'), /^[0-9a-f]{16}$/);
});

test('a cut move keeps its image with a marker; a matching retry takes it over', async (t) => {
  const { data, img, st } = await setup(t);
  const keep = keepEntries(st, 'vm-1', 'host-a');
  assert.ok(keep);
  await keepImages(data, keep);
  assert.ok(await readMarker(data, 'vm-1', 'disk0'));
  const offer = keep[0]!;
  const answers = await answerOffers(data, 'vm-1', 'host-a', { ...st, resume: [offer] });
  assert.deepEqual(answers, [{ diskId: 'disk0', resume: true }]);
  await takeOver(data, 'vm-1', 'disk0');
  assert.equal(await readMarker(data, 'vm-1', 'disk0'), null);
  assert.ok(fs.existsSync(img), 'the image stays: the retry writes on it');
});

test('a kept image that cannot be resumed is deleted with its marker (never reused, never leaked)', async (t) => {
  const { data, img, st } = await setup(t);
  await keepImages(data, keepEntries(st, 'vm-1', 'host-a') ?? []);
  // The source lost its bitmap: no offer.
  const answers = await answerOffers(data, 'vm-1', 'host-a', st);
  assert.equal(answers[0]?.resume, false);
  assert.ok(!fs.existsSync(img));
  assert.equal(await readMarker(data, 'vm-1', 'disk0'), null);
});

test("another host's Prepare for the same VM neither takes nor deletes the kept image", async (t) => {
  const { data, img, st } = await setup(t);
  const keep = keepEntries(st, 'vm-1', 'host-a') ?? [];
  await keepImages(data, keep);
  const forged = keep.map((k) => ({ ...k, source: 'host-c' }));
  const answers = await answerOffers(data, 'vm-1', 'host-c', { ...st, resume: forged });
  assert.equal(answers[0]?.resume, false);
  assert.ok(fs.existsSync(img), "host-a's kept image stays");
  assert.notEqual(await readMarker(data, 'vm-1', 'disk0'), null);
});

test('a kept image written on since the cut is not reused', async (t) => {
  const { data, img, st } = await setup(t);
  const keep = keepEntries(st, 'vm-1', 'host-a') ?? [];
  await keepImages(data, keep);
  await fsp.appendFile(img, 'someone wrote here');
  const answers = await answerOffers(data, 'vm-1', 'host-a', { ...st, resume: keep });
  assert.deepEqual(answers, [{ diskId: 'disk0', resume: false, why: 'the kept copy changed since the cut' }]);
  assert.ok(!fs.existsSync(img));
});

test('expired kept images are deleted, except where their VM is registered', async (t) => {
  const { data, img, st } = await setup(t);
  const [k] = keepEntries(st, 'vm-1', 'host-a') ?? [];
  assert.ok(k);
  await keepImage(data, k, new Date(Date.now() - 25 * 3600_000));
  assert.equal(await sweepKeptImages(data, new Set(['vm-1'])), 0);
  assert.ok(fs.existsSync(img), "a registered VM's path is not deleted");
  await keepImage(data, k, new Date(Date.now() - 25 * 3600_000));
  assert.equal(await sweepKeptImages(data, new Set()), 1);
  assert.ok(!fs.existsSync(img));
  assert.equal(await readMarker(data, 'vm-1', 'disk0'), null);
});

test("another host's own cut move of the same VM disk does not replace the kept copy's marker", async (t) => {
  const { data, img, st } = await setup(t);
  await keepImages(data, keepEntries(st, 'vm-1', 'host-a') ?? []);
  const before = await readMarker(data, 'vm-1', 'disk0');
  // host-c names the same VM and disk id at a path of its own, then aborts its move: its undo
  // must not write its marker over host-a's (that would orphan host-a's image, and host-a's
  // retry would find a file at its path that no marker names).
  const mine = path.join(path.dirname(img), 'mine.qcow2');
  await fsp.writeFile(mine, 'host-c');
  const ours: Storage = {
    ...st,
    disks: [{ ...st.disks[0]!, path: mine }],
    resumeKey: moveKeyOf('vm-1', 'host-c', 'host-b'),
  };
  const kept = await keepImages(data, keepEntries(ours, 'vm-1', 'host-c') ?? []);
  assert.deepEqual(kept, [], "host-c's image is not kept (its undo deletes it)");
  assert.deepEqual(await readMarker(data, 'vm-1', 'disk0'), before, "host-a's marker is unchanged");
  assert.ok(fs.existsSync(img));
  // host-a's retry still resumes.
  const offer = keepEntries(st, 'vm-1', 'host-a') ?? [];
  assert.deepEqual(await answerOffers(data, 'vm-1', 'host-a', { ...st, resume: offer }), [
    { diskId: 'disk0', resume: true },
  ]);
});
