// The NoCloud seed is a real ISO 9660 volume `cidata` whose files read back unchanged (isoinfo, from genisoimage).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { buildSeed } from '../../src/vm/cloud-init.js';
import { run } from '../../src/util/exec.js';
import { InvalidInputError } from '../../src/errors.js';

test('buildSeed writes seed.iso with volume id cidata and the three files', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-seed-test-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  const userData = '#cloud-config\nbootcmd:\n  - [sh, -c, "echo ferry > /dev/ttyS0"]\n';
  const networkConfig = 'version: 2\nethernets:\n  id0:\n    match: {name: "en*"}\n    dhcp4: true\n';
  const iso = await buildSeed({
    dir,
    userData,
    metaData: 'instance-id: t1\n',
    networkConfig,
    signal: AbortSignal.timeout(30_000),
  });
  assert.equal(iso, path.join(dir, 'seed.iso'));
  assert.deepEqual((await fsp.readdir(dir)).sort(), ['seed.iso'], 'no temporary files are left');
  const pvd = (await run('isoinfo', ['-d', '-i', iso])).stdout;
  assert.match(pvd, /^Volume id: cidata$/m);
  assert.match(pvd, /Rock Ridge signatures version/);
  const read = async (name: string) => (await run('isoinfo', ['-R', '-i', iso, '-x', `/${name}`])).stdout;
  assert.equal(await read('user-data'), userData);
  assert.equal(await read('meta-data'), 'instance-id: t1\n');
  assert.equal(await read('network-config'), networkConfig);

  // A second build replaces the seed; bad input leaves it as it was.
  await buildSeed({ dir, userData: '#!/bin/sh\necho two\n' });
  assert.equal(await read('user-data'), '#!/bin/sh\necho two\n');
  assert.match(await read('meta-data'), /^instance-id: iid-ferry-/);
  await assert.rejects(buildSeed({ dir, userData: 'not cloud-config' }), InvalidInputError);
  assert.equal(await read('user-data'), '#!/bin/sh\necho two\n');
  await assert.rejects(
    buildSeed({ dir: path.join(dir, 'missing'), userData: '#cloud-config\n' }),
    /no such folder; create it first/,
  );
});
