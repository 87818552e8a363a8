// A leader whose services cannot be set up (a watch etcd did not answer in time) against a real
// etcd: it says so, gives the election key up and leads again, and then acts. Before, the failure
// was swallowed: a CI run kept a leader that never failed an HA VM back (issue 17, stop 52).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { initDomain } from '../../src/domain/ca.js';
import { startMembers, stopLabMembers } from '../../src/cluster/etcd-members.js';
import { EtcdStore, type ClusterStore } from '../../src/cluster/store.js';
import { HaMonitor } from '../../src/cluster/ha.js';
import { EventBus } from '../../src/events/bus.js';
import { FerryError } from '../../src/errors.js';
import * as K from '../../src/cluster/keys.js';
import type { HaRecord } from '../../src/cluster/model.js';
import { sleep } from '../../src/util/exec.js';

async function until<T>(what: string, ms: number, fn: () => Promise<T | null | undefined>): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(100);
  }
}

test(
  'a leader that cannot watch the VM records resigns, leads again and fails a VM back',
  { timeout: 120_000 },
  async (t) => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-leader-'));
    const stores: EtcdStore[] = [];
    let monitor: HaMonitor | null = null;
    try {
      await initDomain(path.join(dir, 'domain'), { name: 'lab' });
      const [member] = await startMembers({
        labDir: dir,
        hosts: ['host-a'],
        domainDir: path.join(dir, 'domain'),
        timeoutMs: 60_000,
      });
      assert.ok(member);
      const store = await EtcdStore.connect({
        endpoints: [member.clientUrl],
        tls: member.tls,
        dialTimeoutMs: 10_000,
        prefix: '/ferry/clusters/lab/',
      });
      stores.push(store);
      // host-b holds vm1, whose home host-a is back: an immediate fail-back is due. Nothing listens
      // on host-b's endpoint, so the move the batch starts fails there; the batch is what counts.
      const since = new Date().toISOString();
      for (const node of ['host-a', 'host-b']) {
        await store.put(K.members.key(node), K.members.encode({ endpoint: 'https://127.0.0.1:9', joinedAt: since }));
        await store.put(K.nodes.key(node), K.nodes.encode({ endpoint: 'https://127.0.0.1:9', since }));
      }
      const vm1: HaRecord = {
        name: 'vm1',
        id: 'id-vm1',
        configPath: '/srv/vms/vm1/vm.json',
        owner: 'host-b',
        memoryMiB: 64,
        generation: 1,
        spec: {
          name: 'vm1',
          cluster: { priority: 'normal', preferredOwners: ['host-a'], antiAffinity: [], failback: 'immediately' },
        },
        away: 'host-a',
      };
      await store.put(K.vms.key('vm1'), K.vms.encode(vm1));

      // The first watch of the VM records fails as one etcd does not answer in time does.
      let refused = 0;
      const flaky = new Proxy(store, {
        get(target, prop, receiver) {
          if (prop === 'watchPrefix')
            return (prefix: string, ...rest: unknown[]) => {
              if (prefix === K.vms.prefix && refused++ === 0)
                return Promise.reject(
                  new FerryError('E_STORE_TIMEOUT', `Cannot watch ${prefix}: etcd did not answer in time; check etcd`),
                );
              return (target.watchPrefix as (...a: unknown[]) => unknown).call(target, prefix, ...rest);
            };
          const v: unknown = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      }) as ClusterStore;
      const events = new EventBus();
      const said: string[] = [];
      events.subscribe((e) => {
        if (e.type === 'cluster.leader') said.push('leader');
        if (e.type === 'cluster.error') said.push(`error: ${e.message}`);
      });
      monitor = new HaMonitor(flaky, { name: 'host-a', tls: member.tls, events });
      monitor.start();

      const batch = await until(
        'the fail-back batch',
        30_000,
        async () => (await K.readOne(store, K.batches, 'host-a'))?.value,
      );
      t.diagnostic(`events: ${said.join(' | ')}`);
      assert.equal(refused >= 2, true, 'the watch was set up again');
      assert.equal(said[0], 'leader');
      assert.match(said[1] ?? '', /^error: Cannot lead the cluster: Cannot watch vms\/: .*gives leadership up/);
      assert.equal(said[2], 'leader');
      assert.equal(batch.kind, 'failback');
      assert.deepEqual(
        batch.items.map((i) => [i.vm, i.from, i.to]),
        [['vm1', 'host-b', 'host-a']],
      );
      // One election key: the first leadership's was given up, not kept alive behind the second.
      const keys = await store.getPrefix(`${K.election.prefix}${K.election.name}/`);
      assert.deepEqual(Object.values(keys), ['host-a']);
    } finally {
      await monitor?.stop();
      for (const s of stores) await s.close().catch(() => undefined);
      await stopLabMembers(dir, { graceMs: 5000 });
      await fsp.rm(dir, { recursive: true, force: true });
    }
  },
);
