// The CLI's hints of where each VM was last seen (src/cli/vm-hosts.ts): kept across commands,
// only written when changed, and never an error when missing, damaged or unwritable.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { VmHosts, vmHostsFile } from '../../src/cli/vm-hosts.js';
import { tempDir } from '../helpers.js';

test('the hints file sits beside the context: in a lab folder, or next to a context file', () => {
  assert.equal(vmHostsFile({ source: '/labs/one' }), '/labs/one/vm-hosts.json');
  assert.equal(vmHostsFile({ source: '/c/ctx.json', file: '/c/ctx.json' }), '/c/ctx.vm-hosts.json');
  assert.equal(vmHostsFile({ source: '/c/ctx', file: '/c/ctx' }), '/c/ctx.vm-hosts.json');
});

test('a hint set by one command is read by the next; a VM gone is forgotten', async (t) => {
  const file = path.join(await tempDir(t), 'vm-hosts.json');
  const a = new VmHosts(file);
  assert.equal(a.get('web'), undefined);
  a.set('web', 'host-a');
  a.set('db', 'host-b');
  await a.save();
  const b = new VmHosts(file);
  assert.equal(b.get('web'), 'host-a');
  b.set('web', 'host-b');
  b.set('db', null);
  await b.save();
  assert.deepEqual(JSON.parse(await fs.readFile(file, 'utf8')), { web: 'host-b' });
});

test('nothing changed, nothing written; a damaged or unwritable file is no error', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'vm-hosts.json');
  await fs.writeFile(file, '{not json');
  const h = new VmHosts(file);
  assert.equal(h.get('web'), undefined);
  await h.save();
  assert.equal(await fs.readFile(file, 'utf8'), '{not json');
  h.set('web', 'host-a');
  await h.save();
  assert.deepEqual(JSON.parse(await fs.readFile(file, 'utf8')), { web: 'host-a' });
  const missing = new VmHosts(path.join(dir, 'no-such-folder', 'vm-hosts.json'));
  missing.set('web', 'host-a');
  await missing.save();
  assert.equal(missing.get('web'), 'host-a');
});

test('the newest 1000 hints are kept', async (t) => {
  const file = path.join(await tempDir(t), 'vm-hosts.json');
  const h = new VmHosts(file);
  for (let i = 0; i < 1005; i++) h.set(`vm${i}`, 'host-a');
  h.set('vm0', 'host-b'); // seen again: newest
  await h.save();
  const kept = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, string>;
  assert.equal(Object.keys(kept).length, 1000);
  assert.equal(kept.vm0, 'host-b');
  assert.equal(kept.vm1, undefined);
  assert.equal(kept.vm1004, 'host-a');
});
