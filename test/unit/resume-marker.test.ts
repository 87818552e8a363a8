import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  checkKeptImage,
  decideResume,
  resumeLine,
  RESUME_MAX_AGE_MS,
  ResumeOffer,
  type ResumeMarker,
  type Verdict,
} from '../../src/migration/resume-marker.js';
import { dropMarker, expiredMarkers, keepImage, readMarker } from '../../src/migration/resume-store.js';

const now = Date.parse('2026-12-02T10:00:00Z');
const offer: ResumeOffer = {
  moveKey: 'm1',
  vmId: 'vm-uuid',
  source: 'host-a',
  diskId: 'disk0',
  path: '/pool/vm/disk0.qcow2',
  virtualSizeBytes: 512 * 1048576,
  format: 'qcow2',
} as const;
const marker: ResumeMarker = {
  ...offer,
  keptAt: new Date(now - 60_000).toISOString(),
  fileSize: 1234,
  fileMtimeMs: 5678,
};
const file = { size: 1234, mtimeMs: 5678 };
const whyOf = (v: Verdict): string => (v.resume ? '' : v.why);

test('a kept image is reused only when the marker matches the offer and the file is untouched', () => {
  assert.deepEqual(checkKeptImage(marker, offer, file, now), { resume: true });
  assert.match(whyOf(checkKeptImage(null, offer, file, now)), /no partial copy/);
  for (const [k, v, word] of [
    ['moveKey', 'm2', 'move'],
    ['vmId', 'other', 'VM'],
    ['source', 'host-c', 'source host'],
    ['diskId', 'disk1', 'disk'],
    ['path', '/pool/vm/x.qcow2', 'path'],
    ['format', 'raw', 'format'],
    ['virtualSizeBytes', 1, 'virtual size'],
  ] as const) {
    const v2 = checkKeptImage(marker, { ...offer, [k]: v }, file, now);
    assert.equal(v2.resume, false, k);
    assert.match(whyOf(v2), new RegExp(`another ${word}$`), k);
  }
  assert.match(whyOf(checkKeptImage(marker, offer, null, now)), /gone/);
  assert.match(whyOf(checkKeptImage(marker, offer, { ...file, size: 1 }, now)), /changed/);
  assert.match(whyOf(checkKeptImage(marker, offer, { ...file, mtimeMs: 1 }, now)), /changed/);
  const old = { ...marker, keptAt: new Date(now - RESUME_MAX_AGE_MS - 1).toISOString() };
  assert.match(whyOf(checkKeptImage(old, offer, file, now)), /expired/);
  assert.match(whyOf(checkKeptImage({ ...marker, keptAt: 'x' }, offer, file, now)), /expired/);
});

test('the source resumes a disk only with a usable bitmap and a destination that agrees', () => {
  const ready = { state: 'ready', dirtyBytes: 10, persistent: true } as const;
  assert.deepEqual(decideResume(ready, { resume: true }), { resume: true });
  assert.deepEqual(decideResume(ready, { resume: false, why: 'x' }), { resume: false, why: 'x' });
  assert.match(whyOf(decideResume({ state: 'absent' }, { resume: true })), /gone/);
  const bad = decideResume({ state: 'unusable', why: 'QEMU marks it inconsistent' }, { resume: true });
  assert.match(whyOf(bad), /unusable \(QEMU marks it inconsistent\)/);
  assert.equal(resumeLine('disk0', { resume: false, why: 'y' }), "disk 'disk0': full copy (y)");
  assert.equal(
    resumeLine('disk0', { resume: true }, { bytes: 1048576, of: 4 * 1048576 }),
    "disk 'disk0': copy resumed, 1.0 MiB re-sent of 4.0 MiB",
  );
});

test('markers: kept with the file as it is, read back checked, malformed never trusted, expired swept', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-resume-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'disk0.qcow2');
  await fsp.writeFile(image, 'partial');
  const o = { ...offer, path: image };
  const m = await keepImage(dir, o, new Date(now));
  const st = await fsp.stat(image);
  assert.equal(m.fileSize, st.size);
  assert.deepEqual(await readMarker(dir, o.vmId, o.diskId), m);
  assert.deepEqual(checkKeptImage(await readMarker(dir, o.vmId, o.diskId), o, st, now), { resume: true });
  await fsp.appendFile(image, 'touched');
  const st2 = await fsp.stat(image);
  assert.match(whyOf(checkKeptImage(m, o, st2, now)), /changed/);
  assert.equal(await readMarker(dir, o.vmId, 'disk9'), null);
  await fsp.writeFile(path.join(dir, 'resume', `${o.vmId}--disk1.json`), JSON.stringify({ ...m, path: 'rel' }));
  assert.equal(await readMarker(dir, o.vmId, 'disk1'), null);
  assert.deepEqual(await expiredMarkers(dir, now + 1000), []);
  assert.equal(await readMarker(dir, o.vmId, 'disk1'), null);
  const gone = await expiredMarkers(dir, now + RESUME_MAX_AGE_MS + 1);
  assert.deepEqual(gone, [m]);
  assert.equal(await readMarker(dir, o.vmId, o.diskId), null);
  await dropMarker(dir, o.vmId, o.diskId);
  assert.equal(ResumeOffer.safeParse({ ...o, diskId: '../x' }).success, false);
  assert.equal(ResumeOffer.safeParse({ ...o, virtualSizeBytes: -1 }).success, false);
});
