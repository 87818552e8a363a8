// The cluster store against a real 3-member etcd cluster (Debian's etcd-server) with
// mutual TLS from a lab domain: KV, CAS transactions, leases (expiry and loss), watches,
// elections (hand-over on resign and on a lost lease), and quorum after a SIGKILL.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { initDomain } from '../../src/domain/ca.js';
import {
  startMembers,
  stopLabMembers,
  killMember,
  isMemberAlive,
  loadMembers,
  type EtcdMember,
} from '../../src/cluster/etcd-members.js';
import { EtcdStore, type WatchEvent, type Leadership } from '../../src/cluster/store.js';
import { FerryError } from '../../src/errors.js';
import { deleteHaRecord, putHaRecord, readHaRecord, swapHaRecord } from '../../src/cluster/records.js';
import { sleep } from '../../src/util/exec.js';

const HOSTS = ['host-a', 'host-b', 'host-c'];
const PREFIX = '/ferry/clusters/lab/';

let dir = '';
let members: EtcdMember[] = [];
let startMs = 0;
const stores: EtcdStore[] = [];

async function connect(ms: EtcdMember[] = members, prefix = PREFIX): Promise<EtcdStore> {
  const s = await EtcdStore.connect({
    endpoints: ms.map((m) => m.clientUrl),
    tls: members[0]!.tls,
    dialTimeoutMs: 10_000,
    prefix,
  });
  stores.push(s);
  return s;
}

async function until<T>(what: string, fn: () => T | Promise<T>, ms = 15_000): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

async function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

describe('etcd cluster store (3 members, mutual TLS)', { timeout: 180_000 }, () => {
  before(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-etcd-'));
    await initDomain(path.join(dir, 'domain'), { name: 'lab' });
    const t0 = Date.now();
    members = await startMembers({ labDir: dir, hosts: HOSTS, domainDir: path.join(dir, 'domain'), timeoutMs: 60_000 });
    startMs = Date.now() - t0;
  });

  after(async () => {
    for (const s of stores) await s.close().catch(() => undefined);
    // From DIR/etcd.json: also members of a start that failed half-way, or a restarted one.
    if (dir) await stopLabMembers(dir, { graceMs: 5000 });
    for (const m of members) if (isMemberAlive(m.pid, m.dataDir)) await killMember(m);
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });

  test('members: one per host, TLS files from the domain, etcd.json, health', async (t) => {
    t.diagnostic(`3 members started and healthy in ${startMs} ms`);
    assert.deepEqual(
      members.map((m) => m.name),
      HOSTS,
    );
    for (const m of members) {
      assert.ok(isMemberAlive(m.pid, m.dataDir), `${m.name} runs`);
      assert.equal(m.dataDir, path.join(dir, 'hosts', m.name, 'etcd'));
      assert.match(m.clientUrl, /^https:\/\/127\.0\.0\.1:\d+$/);
      await fsp.access(path.join(m.dataDir, 'tls', `${m.name}.crt`));
      await fsp.access(path.join(dir, 'hosts', m.name, 'etcd.log'));
    }
    assert.deepEqual(
      (await loadMembers(dir)).map((m) => m.pid),
      members.map((m) => m.pid),
    );
    assert.equal(isMemberAlive(members[0]!.pid, '/elsewhere'), false, 'a pid is only ours with our data dir');
    assert.equal(isMemberAlive(process.pid, members[0]!.dataDir), false, 'a recycled pid is not a member');
    // Idempotent: a second start leaves running members alone.
    const again = await startMembers({ labDir: dir, hosts: HOSTS, domainDir: path.join(dir, 'domain') });
    assert.deepEqual(
      again.map((m) => m.pid),
      members.map((m) => m.pid),
    );
    // Plain http and a client without a certificate are refused.
    await assert.rejects(
      EtcdStore.connect({ endpoints: [members[0]!.clientUrl], prefix: PREFIX, dialTimeoutMs: 1500 }),
      (e: FerryError) => e instanceof FerryError && e.code.startsWith('E_STORE_'),
    );
  });

  test('get, put, getPrefix, delete; keys are namespaced by the prefix', async () => {
    const s = await connect();
    const other = await connect(members, '/ferry/clusters/other/');
    assert.equal(await s.get('nodes/host-a'), null);
    await s.put('nodes/host-a', '{"state":"up"}');
    await s.put('nodes/host-b', '{"state":"up"}');
    await s.put('vms/web1', 'host-a');
    assert.equal(await s.get('nodes/host-a'), '{"state":"up"}');
    assert.deepEqual(await s.getPrefix('nodes/'), {
      'nodes/host-a': '{"state":"up"}',
      'nodes/host-b': '{"state":"up"}',
    });
    assert.equal(await other.get('nodes/host-a'), null, 'another prefix does not see these keys');
    assert.deepEqual(await other.getPrefix(''), {});
    await s.delete('nodes/host-b');
    assert.deepEqual(Object.keys(await s.getPrefix('nodes/')), ['nodes/host-a']);
    await s.delete('nodes/never-existed');
  });

  test('txn: compare-and-swap on version (0 = absent) and value', async () => {
    const s = await connect();
    const create = {
      compare: [{ key: 'locks/vm1', version: 0 }],
      success: [{ type: 'put' as const, key: 'locks/vm1', value: 'host-a' }],
      failure: [{ type: 'put' as const, key: 'locks/vm1.loser', value: 'host-b' }],
    };
    assert.equal(await s.txn(create), true);
    assert.equal(await s.txn({ ...create, success: [{ type: 'put', key: 'locks/vm1', value: 'host-b' }] }), false);
    assert.equal(await s.get('locks/vm1'), 'host-a', 'the failed CAS changed nothing');
    assert.equal(await s.get('locks/vm1.loser'), 'host-b', 'the failure branch ran');
    // Version 1 now; a put makes it 2.
    assert.equal(
      await s.txn({
        compare: [{ key: 'locks/vm1', version: 1, value: 'host-a' }],
        success: [
          { type: 'put', key: 'locks/vm1', value: 'host-c' },
          { type: 'delete', key: 'locks/vm1.loser' },
        ],
      }),
      true,
    );
    assert.equal(await s.get('locks/vm1'), 'host-c');
    assert.equal(await s.get('locks/vm1.loser'), null);
    assert.equal(
      await s.txn({ compare: [{ key: 'locks/vm1', version: 1 }], success: [{ type: 'delete', key: 'locks/vm1' }] }),
      false,
      'stale version',
    );
    assert.equal(
      await s.txn({
        compare: [{ key: 'locks/vm1', value: 'host-a' }],
        success: [{ type: 'delete', key: 'locks/vm1' }],
      }),
      false,
      'stale value',
    );
    assert.equal(
      await s.txn({
        compare: [{ key: 'locks/vm1', version: 2, value: 'host-c' }],
        success: [{ type: 'delete', key: 'locks/vm1' }],
      }),
      true,
    );
    assert.equal(await s.get('locks/vm1'), null);
    // No compare: the ops still run atomically.
    assert.equal(
      await s.txn({
        compare: [],
        success: [
          { type: 'put', key: 'x/1', value: 'a' },
          { type: 'put', key: 'x/2', value: 'b' },
        ],
      }),
      true,
    );
    assert.deepEqual(await s.getPrefix('x/'), { 'x/1': 'a', 'x/2': 'b' });
    await assert.rejects(
      s.txn({ compare: [{ key: 'k' }], success: [] }),
      (e: FerryError) => e.code === 'E_INVALID_INPUT',
    );
  });

  test("an HA record: a node writes its own or takes it from a move's source, never a third node's", async () => {
    const s = await connect();
    const rec = (owner: string) => ({
      name: 'ha1',
      id: 'id-ha1',
      configPath: '/pool/ha1/vm.json',
      owner,
      memoryMiB: 64,
      spec: { name: 'ha1' },
    });
    const read = async () => (await readHaRecord(s, 'ha1'))?.value;
    await putHaRecord(s, rec('host-a'));
    assert.equal((await read())?.owner, 'host-a', 'no record: made');
    await putHaRecord(s, rec('host-a'));
    await putHaRecord(s, rec('host-b'), { takeFrom: 'host-a' });
    assert.equal((await read())?.owner, 'host-b', "a move's destination takes it from the source");
    // A leader's HA restart gives it to host-c under a new generation.
    const cur = (await readHaRecord(s, 'ha1'))!;
    assert.equal(
      await swapHaRecord(s, cur, { ...cur.value, owner: 'host-c', generation: cur.value.generation + 1 }),
      true,
    );
    // host-a's start, or host-b's late arrival from host-a, must not take it back.
    for (const [owner, takeFrom] of [
      ['host-a', undefined],
      ['host-b', 'host-a'],
    ] as const)
      await assert.rejects(
        putHaRecord(s, rec(owner), takeFrom ? { takeFrom } : {}),
        (e: FerryError) =>
          e.code === 'E_HA_OWNED_ELSEWHERE' && /gives it to host 'host-c' \(generation 1\)/.test(e.message),
      );
    assert.deepEqual([(await read())?.owner, (await read())?.generation], ['host-c', 1], 'unchanged');
    await putHaRecord(s, rec('host-c'));
    assert.equal((await read())?.generation, 1, 'its owner keeps the generation');
    await deleteHaRecord(s, 'ha1');
  });

  test('watchPrefix: put and delete events in order, nothing after cancel', async () => {
    const s = await connect();
    const events: WatchEvent[] = [];
    const cancel = await s.watchPrefix('w/', (ev) => events.push(ev));
    await s.put('w/a', '1');
    await s.put('other/a', 'ignored');
    await s.put('w/a', '2');
    await s.delete('w/a');
    await until('3 events', () => events.length >= 3);
    assert.deepEqual(events, [
      { type: 'put', key: 'w/a', value: '1' },
      { type: 'put', key: 'w/a', value: '2' },
      { type: 'delete', key: 'w/a', value: null },
    ]);
    await cancel();
    await s.put('w/b', '3');
    await sleep(300);
    assert.equal(events.length, 3);
  });

  test('lease: kept alive beyond its TTL; released, its keys vanish within the TTL (TTL 2 s)', async (t) => {
    const s = await connect();
    const watcher = await connect();
    let lostCalls = 0;
    const lease = await s.grantLease(2, {
      onLost: () => {
        lostCalls++;
      },
    });
    await s.put('members/host-a', 'alive', { lease });
    await s.txn({
      compare: [{ key: 'members/host-a.meta', version: 0 }],
      success: [{ type: 'put', key: 'members/host-a.meta', value: 'm', lease }],
    });
    await sleep(4500);
    assert.equal(await s.get('members/host-a'), 'alive', 'keepalive holds the key past 2×TTL');
    assert.equal(lease.lost, false);

    let deletedAt = 0;
    const cancel = await watcher.watchPrefix('members/', (ev) => {
      if (ev.type === 'delete' && ev.key === 'members/host-a') deletedAt = Date.now();
    });
    const releasedAt = Date.now();
    lease.release(); // as if the host died: no more keepalives
    await until("the lease's key to vanish", () => deletedAt, 10_000);
    const detect = deletedAt - releasedAt;
    t.diagnostic(`lease (TTL 2 s) released: its key deleted after ${detect} ms`);
    assert.ok(detect <= 4000, `expired within TTL + lease-check slack (${detect} ms)`);
    assert.equal(await s.get('members/host-a.meta'), null);
    assert.equal(lostCalls, 0, 'release() is not a loss');
    await cancel();

    // Revoke: the keys vanish at once.
    const l2 = await s.grantLease(5);
    await s.put('members/host-b', 'alive', { lease: l2 });
    await l2.revoke();
    assert.equal(await s.get('members/host-b'), null);
  });

  test(
    'campaign: one leader; hand-over on resign; abort while waiting; hand-over when the leader loses ' + 'its lease',
    async (t) => {
      const s = await connect();
      const a = await s.campaign('scheduler', 'host-a', { ttlSeconds: 2 });
      assert.equal(await s.leader('scheduler'), 'host-a');
      assert.equal(await s.get(a.key), 'host-a');
      let bLeader: Leadership | null = null;
      const bP = s.campaign('scheduler', 'host-b', { ttlSeconds: 2 }).then((l) => {
        bLeader = l;
        return l;
      });
      // Queue order is creation order: let host-b's key exist before host-c campaigns.
      await until('host-b to queue', async () => Object.keys(await s.getPrefix('election/scheduler/')).length === 2);
      const ac = new AbortController();
      const cP = s.campaign('scheduler', 'host-c', { ttlSeconds: 2, signal: ac.signal });
      await until('host-c to queue', async () => Object.keys(await s.getPrefix('election/scheduler/')).length === 3);
      // Two TTLs: the waiting candidates renew every third of the TTL only, and keep their places.
      await sleep(4500);
      assert.equal(bLeader, null, 'host-b waits while host-a leads');
      assert.equal(Object.keys(await s.getPrefix('election/scheduler/')).length, 3, 'the waiting keep their places');
      // A decision fenced on leadership: only the leader's transaction passes.
      assert.equal(
        await s.txn({
          compare: [{ key: a.key, value: 'host-a' }],
          success: [{ type: 'put', key: 'decisions/1', value: 'by host-a' }],
        }),
        true,
      );
      const resignedAt = Date.now();
      await a.resign();
      const b = await within(10_000, bP, 'host-b to be elected');
      t.diagnostic(`resign → next leader elected in ${Date.now() - resignedAt} ms`);
      assert.equal(await s.leader('scheduler'), 'host-b');
      assert.equal(
        await s.txn({
          compare: [{ key: a.key, value: 'host-a' }],
          success: [{ type: 'put', key: 'decisions/2', value: 'by host-a' }],
        }),
        false,
        'the old leader is fenced off',
      );
      ac.abort();
      await assert.rejects(cP, (e: FerryError) => e.code === 'E_ABORTED');
      assert.deepEqual(
        Object.values(await s.getPrefix('election/scheduler/')),
        ['host-b'],
        'the aborted candidate left no key',
      );
      await b.resign();
      assert.equal(await s.leader('scheduler'), null);

      // Leader on a host whose etcd member dies: its lease cannot be renewed, it learns it
      // lost leadership, and the candidate on another host takes over.
      const c = members[2]!;
      const isolated = await connect([c]);
      let lostAt = 0;
      let lostErr: FerryError | null = null;
      const x = await isolated.campaign('ha', 'host-c', {
        ttlSeconds: 2,
        onLost: (e) => {
          lostAt = Date.now();
          lostErr = e;
        },
      });
      let plainLost = 0;
      const plain = await isolated.grantLease(2, {
        onLost: () => {
          plainLost = Date.now();
        },
      });
      await isolated.put('members/host-c', 'alive', { lease: plain });
      let yAt = 0;
      // TTL 5 s on the healthy side: if the dead member was etcd's raft leader, keepalives
      // stall for the re-election (1-2 s), which a 2 s lease would not survive.
      const yP = s.campaign('ha', 'host-a', { ttlSeconds: 5 }).then((l) => {
        yAt = Date.now();
        return l;
      });
      await sleep(300);
      assert.equal(yAt, 0, 'host-a waits while host-c leads');
      const killedAt = Date.now();
      await killMember(c);
      try {
        const y = await within(20_000, yP, 'host-a to be elected');
        await until('onLost of the old leader', () => lostAt, 10_000);
        await until('onLost of the lease on the dead member', () => plainLost, 10_000);
        t.diagnostic(
          `leader's etcd member killed: its onLost after ${lostAt - killedAt} ms, ` +
            `its lease's onLost after ${plainLost - killedAt} ms, new leader elected after ${yAt - killedAt} ms`,
        );
        assert.equal(x.lost, true);
        assert.equal(plain.lost, true);
        assert.equal(lostErr!.code, 'E_STORE_LEADERSHIP_LOST');
        assert.ok(lostAt - killedAt <= 3000, 'the old leader learns within the TTL');
        assert.equal(await s.leader('ha'), 'host-a');
        // Its own lease was granted just after the campaign's, so it may lapse a little after
        // the campaign key whose expiry elected host-a (a full run once read it 'alive' then): waited for,
        // within its TTL and the slack of a Raft re-election.
        await until(
          "the dead host's membership key to expire",
          async () => (await s.get('members/host-c')) === null,
          5000,
        );
        await assert.rejects(
          isolated.put('members/host-c', 'again', { lease: plain }),
          (e: FerryError) => e.code === 'E_STORE_LEASE_LOST',
        );
        await y.resign();
      } finally {
        // Bring host-c's member back (with its data) for the next test.
        members = await startMembers({ labDir: dir, hosts: HOSTS, domainDir: path.join(dir, 'domain') });
      }
      assert.ok(isMemberAlive(members[2]!.pid, members[2]!.dataDir));
    },
  );

  test("campaign: a candidate whose own key goes with the leader's (the election cleared) is not elected", async () => {
    const s = await connect();
    const a = await s.campaign('cleared', 'host-a', { ttlSeconds: 2 });
    let lostA = false;
    a.onLost(() => (lostA = true));
    const bP = s.campaign('cleared', 'host-b', { ttlSeconds: 2 });
    await until('host-b to queue', async () => Object.keys(await s.getPrefix('election/cleared/')).length === 2);
    // Both keys in one request, as `etcdctl del --prefix` clears an election: host-b's wait for
    // host-a's key ends, but its own key is gone too. Before, it was handed a leadership already lost.
    const keys = Object.keys(await s.getPrefix('election/cleared/'));
    assert.equal(await s.txn({ compare: [], success: keys.map((key) => ({ type: 'delete' as const, key })) }), true);
    await assert.rejects(
      within(10_000, bP, 'host-b to give up'),
      (e: FerryError) => e.code === 'E_STORE_LEADERSHIP_LOST',
    );
    await until('host-a to learn it lost', () => lostA, 5000);
    assert.equal(await s.leader('cleared'), null);
  });

  test(
    'quorum: the store keeps working when one of three members is SIGKILLed; a restarted member ' + 'keeps its data',
    async (t) => {
      const s = await connect();
      const events: WatchEvent[] = [];
      const cancel = await s.watchPrefix('q/', (ev) => events.push(ev));
      const lease = await s.grantLease(5);
      await s.put('q/before', '1', { lease });
      const victim = members[0]!;
      const killedAt = Date.now();
      await killMember(victim);
      assert.equal(isMemberAlive(victim.pid, victim.dataDir), false);
      await s.put('q/after', '2');
      t.diagnostic(`first write after SIGKILL of ${victim.name} took ${Date.now() - killedAt} ms`);
      assert.equal(await s.get('q/before'), '1');
      assert.equal(await s.get('q/after'), '2');
      assert.equal(
        await s.txn({
          compare: [{ key: 'q/after', version: 1 }],
          success: [{ type: 'put', key: 'q/after', value: '3' }],
        }),
        true,
      );
      assert.deepEqual(await s.getPrefix('q/'), { 'q/before': '1', 'q/after': '3' });
      await until('watch events across the kill', () => events.some((e) => e.key === 'q/after' && e.value === '3'));
      const fresh = await connect(members.slice(1));
      const l = await fresh.campaign('after-kill', 'host-b', { ttlSeconds: 2 });
      await sleep(6000); // > TTL of both leases: keepalives go to the surviving members
      assert.equal(await s.get('q/before'), '1', 'the 5 s lease is still kept alive');
      assert.equal(l.lost, false, 'the 2 s leadership lease is still kept alive');
      await l.resign();
      await cancel();

      // Restart: the member rejoins with its data (--initial-cluster-state existing) and catches up.
      const restarted = await startMembers({ labDir: dir, hosts: HOSTS, domainDir: path.join(dir, 'domain') });
      const again = restarted.find((m) => m.name === victim.name)!;
      assert.notEqual(again.pid, victim.pid);
      assert.deepEqual(
        restarted.filter((m) => m.name !== victim.name).map((m) => m.pid),
        members.slice(1).map((m) => m.pid),
      );
      members = restarted;
      assert.match(await fsp.readFile(again.logFile, 'utf8'), /"initial-cluster-state":"existing"/);
      const only = await connect([again]);
      assert.equal(await only.get('q/after'), '3', 'the restarted member has the writes made while it was dead');
    },
  );
});
