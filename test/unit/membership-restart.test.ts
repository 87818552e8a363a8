// A restarted agent and its host's fence (src/cluster/membership.ts, fence.ts): the agent beats
// from its start, not once joined, and hands its lease to the fence (the liveness file) only
// once its node key is on that lease. Joining can take seconds on a loaded host (reconciling,
// the node key); with the beats started after it and the lease handed over at the grant, the
// fence counted from the agent's first beat and killed a healthy HA VM (the cluster-fence e2e
// test in the full suite). An in-memory store; the slow join is a slow beforeAnnounce.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Membership, fenceAfterMs, NODE_TTL_S } from '../../src/cluster/membership.js';
import { LivenessWriter, fenceDue, type Liveness } from '../../src/cluster/fence.js';
import type { ClusterStore, Lease, Leadership, LeaseWatch } from '../../src/cluster/store.js';
import { EventBus } from '../../src/events/bus.js';
import { sleep } from '../../src/util/exec.js';

/** etcd as far as one node needs it: puts are logged with their time, leases renew every 500 ms. */
class MemStore implements ClusterStore {
  readonly prefix = '/ferry/clusters/c/';
  readonly data = new Map<string, string>();
  readonly puts: { key: string; at: number; lease?: string }[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private nextLease = 100;

  get(key: string): Promise<string | null> {
    return Promise.resolve(this.data.get(key) ?? null);
  }
  getPrefix(prefix: string): Promise<Record<string, string>> {
    return Promise.resolve(Object.fromEntries([...this.data].filter(([k]) => k.startsWith(prefix))));
  }
  put(key: string, value: string, opts: { lease?: Lease } = {}): Promise<void> {
    this.data.set(key, value);
    this.puts.push({ key, at: Date.now(), ...(opts.lease ? { lease: opts.lease.id } : {}) });
    return Promise.resolve();
  }
  delete(key: string): Promise<void> {
    this.data.delete(key);
    return Promise.resolve();
  }
  txn(): Promise<boolean> {
    return Promise.resolve(true);
  }
  grantLease(ttlSeconds: number, w: LeaseWatch = {}): Promise<Lease> {
    const id = String(this.nextLease++);
    w.onRenewed?.(Date.now());
    const timer = setInterval(() => w.onRenewed?.(Date.now()), 500);
    this.timers.add(timer);
    const end = (): void => {
      clearInterval(timer);
      this.timers.delete(timer);
    };
    return Promise.resolve({
      id,
      ttlSeconds,
      lost: false,
      revoke: () => {
        end();
        return Promise.resolve();
      },
      release: end,
    });
  }
  keepAliveOnce(): Promise<number> {
    return Promise.resolve(NODE_TTL_S);
  }
  watchPrefix(): Promise<() => Promise<void>> {
    return Promise.resolve(() => Promise.resolve());
  }
  campaign(_e: string, _c: string, o: { signal?: AbortSignal } = {}): Promise<Leadership> {
    // Never elected: this node only beats and renews.
    return new Promise((_, reject) => o.signal?.addEventListener('abort', () => reject(new Error('stopped'))));
  }
  leader(): Promise<string | null> {
    return Promise.resolve(null);
  }
  close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    return Promise.resolve();
  }
}

test(
  'a restarted agent slow to join (longer than the fence margin) keeps beating meanwhile, and hands ' +
    'its lease to the fence only with the node key on it, fresh: the fence never finds it overdue',
  async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-restart-'));
    const store = new MemStore();
    const events = new EventBus();
    const lost: string[] = [];
    events.subscribe((e) => {
      if (e.type === 'cluster.lease-lost') lost.push(e.reason);
    });
    const m = new Membership(
      { name: 'c', endpoints: ['https://127.0.0.1:1'] },
      { name: 'host-a', endpoint: 'https://127.0.0.1:2' },
      { ca: '', cert: '', key: '' },
      events,
    );
    m.store = store;
    // The liveness file without a real fence process (dataDir would start one).
    const file = path.join(dir, 'run', 'cluster-liveness.json');
    (m as unknown as { liveness: LivenessWriter }).liveness = new LivenessWriter(dir);
    const read = (): Promise<Liveness | null> =>
      fsp.readFile(file, 'utf8').then(
        (t) => JSON.parse(t) as Liveness,
        () => null,
      );
    const joinMs = fenceAfterMs(NODE_TTL_S) + 700; // longer than the margin the fence counts by
    let joinStarted = 0;
    let handedEarly: Liveness | null = null;
    m.beforeAnnounce = async () => {
      joinStarted = Date.now();
      await sleep(joinMs);
      handedEarly = await read();
    };
    try {
      await m.start();
      assert.equal(handedEarly, null, 'no lease was handed to the fence before the node key was on it');
      const beatsWhileJoining = store.puts.filter(
        (p) => p.key.endsWith('members/host-a') && p.at >= joinStarted && p.at <= joinStarted + joinMs,
      );
      assert.ok(beatsWhileJoining.length >= 3, `beats went on while joining (${beatsWhileJoining.length})`);
      const nodePut = store.puts.find((p) => p.key.endsWith('nodes/host-a'));
      assert.ok(nodePut?.lease, 'the node key is on the new lease');
      // The fence's view from the hand-over on: this agent's lease, never overdue.
      let l: Liveness | null = null;
      for (let i = 0; i < 50 && !l; i++) {
        l = await read();
        if (!l) await sleep(20);
      }
      assert.equal(l?.leaseId, nodePut.lease, 'the fence guards the lease that holds the node key');
      for (const t = Date.now(); Date.now() - t < 2000;) {
        const now = Date.now();
        const cur = await read();
        assert.ok(cur && !fenceDue(cur, now, null), `not overdue (renewed ${now - (cur?.renewedAt ?? 0)} ms ago)`);
        await sleep(100);
      }
      assert.deepEqual(lost, [], 'the agent did not fence itself either');
    } finally {
      await m.stop();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  },
);
