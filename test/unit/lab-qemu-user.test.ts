// The lab's choice of QEMU's user: ferry-qemu when every folder on the way lets it pass,
// else root with the folder named; the lab opens only the folders it made itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { labQemuUser, makeLabFolder } from '../../src/lab/qemu-user.js';
import { lookupQemuUser } from '../../src/qemu/user.js';

test('the lab runs QEMU as ferry-qemu only when it may pass; it opens only the folders it made', async (t) => {
  const top = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-unit-'));
  t.after(() => fsp.rm(top, { recursive: true, force: true }));
  const lab = path.join(top, 'lab');
  await makeLabFolder(path.join(lab, 'hosts', 'host-a'));
  for (const d of [lab, path.join(lab, 'hosts'), path.join(lab, 'hosts', 'host-a')])
    assert.equal((await fsp.stat(d)).mode & 0o777, 0o711, d);
  assert.equal((await fsp.stat(top)).mode & 0o777, 0o700, 'a folder the lab did not make is left alone');

  if (process.getuid?.() !== 0 || !(await lookupQemuUser('ferry-qemu'))) {
    const r = await labQemuUser([lab]);
    assert.equal(r.user, null);
    return;
  }
  const blocked = await labQemuUser([path.join(lab, 'hosts', 'host-a')]);
  assert.equal(blocked.user, null);
  assert.equal(blocked.reason, `ferry-qemu may not enter ${top} (chmod o+x ${top} to let it)`);
  await fsp.chmod(top, 0o711); // what the tests' labTempDir does
  assert.deepEqual(await labQemuUser([path.join(lab, 'hosts', 'host-a')]), { user: 'ferry-qemu' });
});
