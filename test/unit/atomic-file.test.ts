import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeFileAtomic } from '../../src/util/atomic-file.js';

test('writeFileAtomic replaces the file, never writes through a link, leaves no temp file', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-atomic-'));
  try {
    const file = path.join(dir, 'vm.json');
    await writeFileAtomic(file, 'one\n', { sync: true });
    await writeFileAtomic(file, 'two\n');
    assert.equal(await fsp.readFile(file, 'utf8'), 'two\n');
    // A link planted where the file goes is replaced by the file, its target untouched.
    const victim = path.join(dir, 'host-file');
    await fsp.writeFile(victim, 'secret\n');
    await fsp.rm(file);
    await fsp.symlink(victim, file);
    await writeFileAtomic(file, 'three\n');
    assert.equal(await fsp.readFile(victim, 'utf8'), 'secret\n');
    assert.equal((await fsp.lstat(file)).isSymbolicLink(), false);
    assert.equal(await fsp.readFile(file, 'utf8'), 'three\n');
    assert.deepEqual((await fsp.readdir(dir)).sort(), ['host-file', 'vm.json']);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
