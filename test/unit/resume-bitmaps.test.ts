// The source's bitmaps of cut resumable copies (resume-bitmaps.ts): which a move's Begin drops,
// which a sweep drops (the destination markers' age rule), and their marks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  bitmapMarks,
  bitmapsLeftBehind,
  expiredBitmaps,
  expireMarks,
  isResumeBitmap,
  markBitmap,
  unmarkBitmap,
} from '../../src/migration/resume-bitmaps.js';
import { resumeBitmapName } from '../../src/migration/resume-copy.js';
import { keptExpired, moveKeyOf, RESUME_MAX_AGE_MS } from '../../src/migration/resume-marker.js';

const toB = resumeBitmapName(moveKeyOf('vm-1', 'host-a', 'host-b'));
const toC = resumeBitmapName(moveKeyOf('vm-1', 'host-a', 'host-c'));
const theirs = 'backup-incremental';

test("Ferry's naming only: an operator's bitmap is never touched, nor a name unsafe in a file name", () => {
  assert.equal(isResumeBitmap(toB), true);
  assert.equal(isResumeBitmap(theirs), false);
  assert.equal(isResumeBitmap('ferry-resume-'), false);
  assert.equal(isResumeBitmap('ferry-resume-../x'), false);
});

test("a move's Begin: a resumable move to B keeps B's bitmap only; any other move keeps none", () => {
  const found = [{ name: toB }, { name: toC }, { name: theirs }];
  assert.deepEqual(bitmapsLeftBehind(found, toB), [toC], 'the retry to B resumes; C cannot be resumed from here');
  assert.deepEqual(bitmapsLeftBehind(found, toC), [toB], 'a move elsewhere drops the one to B');
  assert.deepEqual(bitmapsLeftBehind(found, null), [toB, toC], 'a mirror, offline or live move resumes none');
  assert.deepEqual(bitmapsLeftBehind([{ name: theirs }], null), []);
});

test("a sweep: the destination markers' age (24 h), no mark, or inconsistent", () => {
  const now = Date.parse('2026-12-02T12:00:00Z');
  const at = (ms: number): string => new Date(now - ms).toISOString();
  assert.equal(keptExpired(at(RESUME_MAX_AGE_MS), now), false);
  assert.equal(keptExpired(at(RESUME_MAX_AGE_MS + 1), now), true);
  assert.equal(keptExpired('not a time', now), true);
  const marks = new Map([
    [toB, at(RESUME_MAX_AGE_MS - 60_000)],
    [toC, at(RESUME_MAX_AGE_MS + 60_000)],
  ]);
  assert.deepEqual(expiredBitmaps([{ name: toB }, { name: toC }, { name: theirs }], marks, now), [toC]);
  assert.deepEqual(expiredBitmaps([{ name: toB, inconsistent: true }], marks, now), [toB], 'no resume can use it');
  assert.deepEqual(expiredBitmaps([{ name: toB }], new Map(), now), [toB], 'unknown age');
});

test('marks: written, read per VM, refreshed, expired at agent start, removed', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-bitmaps-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  const now = Date.now();
  await markBitmap(dir, 'vm-1', toB, new Date(now - RESUME_MAX_AGE_MS - 1000));
  await markBitmap(dir, 'vm-1', toC, new Date(now));
  await markBitmap(dir, 'vm-2', toB, new Date(now));
  await markBitmap(dir, 'vm-1', theirs, new Date(now)); // not Ferry's: no mark
  await markBitmap(dir, '../vm', toB, new Date(now)); // not a VM id: no mark
  assert.deepEqual([...(await bitmapMarks(dir, 'vm-1')).keys()].sort(), [toB, toC].sort());
  assert.equal(await expireMarks(dir, now), 1, "vm-1's mark to B is past 24 h");
  assert.deepEqual([...(await bitmapMarks(dir, 'vm-1')).keys()], [toC]);
  await markBitmap(dir, 'vm-1', toC, new Date(now + 5000));
  assert.equal((await bitmapMarks(dir, 'vm-1')).get(toC), new Date(now + 5000).toISOString(), 'a cut refreshes it');
  await unmarkBitmap(dir, 'vm-1', toC);
  assert.deepEqual([...(await bitmapMarks(dir, 'vm-1')).keys()], []);
  assert.deepEqual([...(await bitmapMarks(dir, 'vm-2')).keys()], [toB]);
  await fsp.writeFile(path.join(dir, 'resume-bitmaps', 'vm-2--junk.json'), '{not json');
  assert.equal(await expireMarks(dir, now), 1, 'a mark that does not parse goes');
});
