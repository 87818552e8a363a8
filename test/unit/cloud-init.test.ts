// Input checks of the NoCloud seed builder (pure logic; the ISO itself is made in
// test/integration/cloud-init-seed.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_SEED_FILE_BYTES, seedFiles } from '../../src/vm/cloud-init.js';
import { InvalidInputError } from '../../src/errors.js';

const invalid = (re: RegExp) => (err: unknown) => err instanceof InvalidInputError && re.test(err.message);

test('seed files: cloud-config or script user-data, derived instance-id', () => {
  const a = seedFiles({ userData: '#cloud-config\nbootcmd: [true]\n' });
  assert.deepEqual(Object.keys(a).sort(), ['meta-data', 'user-data']);
  assert.match(a['meta-data']!, /^instance-id: iid-ferry-[0-9a-f]{16}\n$/);
  assert.equal(seedFiles({ userData: '#cloud-config\nbootcmd: [true]\n' })['meta-data'], a['meta-data']);
  assert.notEqual(seedFiles({ userData: '#cloud-config\n' })['meta-data'], a['meta-data']);
  assert.equal(seedFiles({ userData: '#!/bin/sh\necho hi\n' })['user-data'], '#!/bin/sh\necho hi\n');
  assert.equal(seedFiles({ userData: '#cloud-config  \r\n' })['user-data'], '#cloud-config  \r\n');
});

test('seed files: given meta-data and network-config are kept', () => {
  const net = 'network:\n  version: 2\n  ethernets:\n    id0:\n      match: {name: "en*"}\n      dhcp4: true\n';
  const f = seedFiles({
    userData: '#cloud-config\n',
    metaData: 'instance-id: web1\nlocal-hostname: web1\n',
    networkConfig: net,
  });
  assert.equal(f['meta-data'], 'instance-id: web1\nlocal-hostname: web1\n');
  assert.equal(f['network-config'], net);
  assert.ok(seedFiles({ userData: '#cloud-config\n', metaData: '{"instance-id": "x"}' }));
  assert.ok(seedFiles({ userData: '#cloud-config\n', networkConfig: 'version: 1\nconfig: []\n' }));
});

test('seed files: bad input is refused with a clear error', () => {
  assert.throws(() => seedFiles({ userData: '' }), invalid(/^Cannot use the cloud-init user-data: it is empty/));
  assert.throws(
    () => seedFiles({ userData: 'bootcmd: [true]\n' }),
    invalid(/first line is 'bootcmd: \[true\]'; start it with '#cloud-config'/),
  );
  assert.throws(() => seedFiles({ userData: '#cloud-configx\n' }), invalid(/start it with '#cloud-config'/));
  const big = '#cloud-config\n' + 'x'.repeat(MAX_SEED_FILE_BYTES);
  assert.throws(() => seedFiles({ userData: big }), invalid(/more than 1048576; shorten it/));
  assert.throws(() => seedFiles({ userData: '#!/bin/sh\n\0' }), invalid(/NUL bytes/));
  assert.throws(
    () => seedFiles({ userData: '#cloud-config\n', metaData: 'local-hostname: a\n' }),
    invalid(/sets no 'instance-id'/),
  );
  assert.throws(
    () => seedFiles({ userData: '#cloud-config\n', networkConfig: 'ethernets: {}\n' }),
    invalid(/no 'version: 1' or 'version: 2'/),
  );
  assert.throws(
    () => seedFiles({ userData: '#cloud-config\n', networkConfig: 'version: 3\n' }),
    invalid(/no 'version: 1'/),
  );
});
