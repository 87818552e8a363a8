// The CLI's hints of where each VM was last seen (src/cli/vm-hosts.ts): kept across commands,
// only written when changed, and never an error when missing, damaged or unwritable.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { VmHosts, vmHostsFile } from '../../src/cli/vm-hosts.js';
import { Clients } from '../../src/cli/context.js';
import type { AgentClient } from '../../src/api/client.js';
import type { VmView } from '../../src/api/schemas.js';
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
  a.save();
  const b = new VmHosts(file);
  assert.equal(b.get('web'), 'host-a');
  b.set('web', 'host-b');
  b.set('db', null);
  b.save();
  assert.deepEqual(JSON.parse(await fs.readFile(file, 'utf8')), { web: 'host-b' });
});

test('nothing changed, nothing written; a damaged or unwritable file is no error', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'vm-hosts.json');
  await fs.writeFile(file, '{not json');
  const h = new VmHosts(file);
  assert.equal(h.get('web'), undefined);
  h.save();
  assert.equal(await fs.readFile(file, 'utf8'), '{not json');
  h.set('web', 'host-a');
  h.save();
  assert.deepEqual(JSON.parse(await fs.readFile(file, 'utf8')), { web: 'host-a' });
  const missing = new VmHosts(path.join(dir, 'no-such-folder', 'vm-hosts.json'));
  missing.set('web', 'host-a');
  missing.save();
  assert.equal(missing.get('web'), 'host-a');
});

test('the newest 1000 hints are kept', async (t) => {
  const file = path.join(await tempDir(t), 'vm-hosts.json');
  const h = new VmHosts(file);
  for (let i = 0; i < 1005; i++) h.set(`vm${i}`, 'host-a');
  h.set('vm0', 'host-b'); // seen again: newest
  h.save();
  const kept = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, string>;
  assert.equal(Object.keys(kept).length, 1000);
  assert.equal(kept.vm0, 'host-b');
  assert.equal(kept.vm1, undefined);
  assert.equal(kept.vm1004, 'host-a');
});

// Clients.locate with hints, against fake hosts: a stale, failing or silent hint falls back
// to asking every host, never gives a wrong answer, and a silent one costs ~1 s, not its timeout.
interface FakeHost {
  /** VMs it has; null: refuses the connection; 'silent': never answers (until aborted). */
  vms: string[] | null | 'silent';
}

class FakeClients extends Clients {
  calls: string[] = [];
  constructor(
    dir: string,
    readonly fakes: Record<string, FakeHost>,
  ) {
    super({
      hosts: Object.keys(fakes).map((name) => ({ name, endpoint: `https://${name}:1` })),
      credentials: { ca: '', cert: '', key: '' },
      source: dir,
    });
  }
  override host(name: string): AgentClient {
    const f = this.fakes[name];
    if (!f) throw new Error(`no host ${name}`);
    const view = (vm: string): VmView => ({ name: vm, host: name }) as VmView;
    const call = (a: { name?: string }, input: { params?: { name: string } }, o: { signal?: AbortSignal }) => {
      const what = input.params ? 'show' : 'list';
      this.calls.push(`${name}:${what}`);
      if (f.vms === null) return Promise.reject(new Error('ECONNREFUSED'));
      if (f.vms === 'silent')
        return new Promise((_, reject) => o.signal?.addEventListener('abort', () => reject(new Error('aborted'))));
      const vms = f.vms;
      if (what === 'list') return Promise.resolve(vms.map(view));
      const vm = input.params?.name ?? '';
      return vms.includes(vm) ? Promise.resolve(view(vm)) : Promise.reject(new Error('E_VM_NOT_FOUND'));
    };
    return { host: name, call, close: () => undefined } as unknown as AgentClient;
  }
}

async function clientsWith(t: TestContext, hint: Record<string, string>, fakes: Record<string, FakeHost>) {
  const dir = await tempDir(t);
  await fs.writeFile(path.join(dir, 'vm-hosts.json'), JSON.stringify(hint));
  return new FakeClients(dir, fakes);
}

test('locate: a right hint asks only that host', async (t) => {
  const c = await clientsWith(t, { web: 'b' }, { a: { vms: [] }, b: { vms: ['web'] } });
  assert.equal((await c.locate('web')).client.host, 'b');
  assert.deepEqual(c.calls, ['b:show']);
});

test('locate: a stale hint (moved elsewhere, host refusing, host gone) asks every host', async (t) => {
  const moved = await clientsWith(t, { web: 'a' }, { a: { vms: [] }, b: { vms: ['web'] } });
  assert.equal((await moved.locate('web')).client.host, 'b');
  assert.equal(moved.vmHosts.get('web'), 'b');
  const refusing = await clientsWith(t, { web: 'a' }, { a: { vms: null }, b: { vms: ['web'] } });
  assert.equal((await refusing.locate('web')).client.host, 'b');
  const gone = await clientsWith(t, { web: 'old' }, { a: { vms: ['web'] } });
  assert.equal((await gone.locate('web')).client.host, 'a');
});

test('locate: a silent hinted host holds the command up ~1 s, then the VM is found elsewhere', async (t) => {
  const c = await clientsWith(t, { web: 'a' }, { a: { vms: 'silent' }, b: { vms: ['web'] } });
  const t0 = Date.now();
  assert.equal((await c.locate('web')).client.host, 'b');
  const ms = Date.now() - t0;
  assert.ok(ms >= 900 && ms < 5000, `${ms} ms`);
});

test('locate: a VM on no host is not found, and its hint is forgotten', async (t) => {
  const c = await clientsWith(t, { web: 'a' }, { a: { vms: [] }, b: { vms: ['db'] } });
  await assert.rejects(c.locate('web'), { code: 'E_VM_NOT_FOUND' });
  assert.equal(c.vmHosts.get('web'), undefined);
  assert.equal(c.vmHosts.get('db'), 'b');
  const down = await clientsWith(t, { web: 'a' }, { a: { vms: null }, b: { vms: [] } });
  await assert.rejects(down.locate('web'), { code: 'E_VM_NOT_FOUND', message: /hosts not answering: a/ });
  assert.equal(down.vmHosts.get('web'), 'a'); // a host did not answer: the hint may still be right
});

test('locate: a name on several hosts is found on the first of the context, as without hints', async (t) => {
  const c = await clientsWith(t, {}, { a: { vms: ['dupe'] }, b: { vms: ['dupe'] } });
  assert.equal((await c.locate('dupe')).client.host, 'a');
  await c.allVms();
  assert.equal(c.vmHosts.get('dupe'), undefined, 'no hint for a name on two hosts');
});
