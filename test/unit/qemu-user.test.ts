import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadAgentConfig } from '../../src/agent/config.js';
import { assertQemuCanOpen, letQemuRead, letQemuThrough, setQemuUser } from '../../src/qemu/user.js';
import { FerryError } from '../../src/errors.js';

const flags = { name: 'h1', data: '/tmp/ferry-unit-none', listen: '127.0.0.1:7443' };

test('qemu.user: absent or root keeps QEMU root; a name is that user; a bad name is refused', async () => {
  assert.equal((await loadAgentConfig(flags)).qemuUser, null);
  assert.equal((await loadAgentConfig({ ...flags, settings: { qemu: { user: 'root' } } })).qemuUser, null);
  assert.equal(
    (await loadAgentConfig({ ...flags, settings: { qemu: { user: 'ferry-qemu' } } })).qemuUser,
    'ferry-qemu',
  );
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-unit-'));
  try {
    await fsp.writeFile(path.join(dir, 'agent.json'), JSON.stringify({ qemu: { user: 'Bad User' } }));
    await assert.rejects(loadAgentConfig({ ...flags, data: dir }), /qemu\.user: a system user name/);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('a file QEMU cannot reach is named with its fix; folders get the search bit only', async (t) => {
  // A user that owns nothing here: only the "others" bits apply to it.
  setQemuUser({ name: 'nobody-q', uid: 65000, gid: 65000, groups: [65000] });
  t.after(() => setQemuUser(null));
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-unit-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  await fsp.chmod(dir, 0o700);
  const file = path.join(dir, 'vmlinuz');
  await fsp.writeFile(file, 'k', { mode: 0o600 });
  await assert.rejects(assertQemuCanOpen(file, 'r', 'start VM'), (e: FerryError) => {
    assert.equal(e.code, 'E_QEMU_USER');
    assert.match(e.message, new RegExp(`may not enter ${dir}; let it through \\(chmod o\\+x ${dir}\\)`));
    return true;
  });
  await letQemuThrough(dir);
  assert.equal((await fsp.stat(dir)).mode & 0o777, 0o701, 'search only: no listing, no writing');
  await assert.rejects(assertQemuCanOpen(file, 'r', 'start VM'), /may not read/);
  await letQemuRead(file);
  const st = await fsp.stat(file);
  assert.equal(st.gid, 65000);
  assert.equal(st.mode & 0o777, 0o640);
  await assertQemuCanOpen(file, 'r', 'start VM');
  await assert.rejects(assertQemuCanOpen(file, 'rw', 'start VM'), /may not write/);
});
