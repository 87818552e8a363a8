// High availability: every clustered (HA) VM has a record in etcd naming its owner node and
// a fencing generation. One agent, elected leader through etcd, watches the nodes; when a
// node's lease expires it restarts that node's HA VMs on the other nodes (cold boot from
// shared storage), each decision an etcd transaction that bumps the generation, so a new
// leader never acts twice. An agent that loses its own lease stops its HA VMs (self-fence);
// QEMU's image locks are the last guard.
import type { Emit } from '../api/events.js';
import { AgentClient } from '../api/client.js';
import { peerActions } from '../api/peer-actions.js';
import { messageOf } from '../errors.js';
import type { ClusterStore, Leadership } from './store.js';
import type { EventBus } from '../events/bus.js';
import { Scheduler } from './queue.js';
import { BatchRunner, placementNodes, policyOf, readNodes } from './drain.js';
import { place } from './placement.js';
import { parseVmSpec } from '../vm/spec.js';

export interface HaRecord {
  name: string;
  id: string;
  configPath: string;
  owner: string;
  memoryMiB: number;
  generation: number;
  spec: Record<string, unknown>;
}

export const vmKey = (name: string): string => `vms/${name}`;

export async function putHaRecord(store: ClusterStore, rec: Omit<HaRecord, 'generation'>): Promise<void> {
  const cur = await store.get(vmKey(rec.name));
  const generation = cur ? (JSON.parse(cur) as HaRecord).generation : 0;
  await store.put(vmKey(rec.name), JSON.stringify({ ...rec, generation }));
}

export interface HaHost {
  name: string;
  tls: { ca: string; cert: string; key: string };
  events: EventBus;
}

/** Runs for the life of the agent: campaign, and while leader, fail VMs over, schedule the queue and run drains. */
export class HaMonitor {
  private leadership: Leadership | null = null;
  private stopWatch: (() => Promise<void>) | null = null;
  private ac = new AbortController();
  private busy = Promise.resolve();
  /** The leader's services while this agent leads (for metrics and the benchmark). */
  current: { scheduler: Scheduler; batches: BatchRunner } | null = null;

  constructor(
    private store: ClusterStore,
    private host: HaHost,
  ) {}

  start(): void {
    void this.campaignLoop();
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.stopWatch?.().catch(() => undefined);
  }

  private async campaignLoop(): Promise<void> {
    while (!this.ac.signal.aborted) {
      try {
        this.leadership = await this.store.campaign('leader', this.host.name, {
          signal: this.ac.signal,
          ttlSeconds: 5,
        });
        this.host.events.emit('cluster.leader', { node: this.host.name });
        const lost = new Promise<void>((resolve) => this.leadership!.onLost(() => resolve()));
        const emit: Emit = (type, fields) => {
          this.host.events.emit(type, fields);
        };
        const scheduler = new Scheduler(this.store, this.leadership, emit);
        const batches = new BatchRunner(
          { store: this.store, self: this.host.name, tls: this.host.tls },
          this.leadership,
          emit,
        );
        this.current = { scheduler, batches };
        this.stopWatch = await this.store.watchPrefix('nodes/', (ev) => {
          if (ev.type === 'delete')
            this.busy = this.busy.then(() => this.failover(ev.key.slice('nodes/'.length))).catch(() => undefined);
          void scheduler.pass();
          void batches.pass();
        });
        // Nodes that died while nobody was leader.
        this.busy = this.busy.then(() => this.sweep()).catch(() => undefined);
        await Promise.all([scheduler.start(), batches.start()]).catch(() => undefined);
        await Promise.race([
          lost,
          new Promise<void>((resolve) => this.ac.signal.addEventListener('abort', () => resolve(), { once: true })),
        ]);
        this.current = null;
        await Promise.all([scheduler.stop(), batches.stop()]);
        await this.stopWatch?.().catch(() => undefined);
      } catch {
        if (this.ac.signal.aborted) return;
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  private async sweep(): Promise<void> {
    const nodes = await this.store.getPrefix('nodes/');
    const vms = await this.store.getPrefix('vms/');
    const owners = new Set(Object.values(vms).map((v) => (JSON.parse(v) as HaRecord).owner));
    for (const o of owners) if (!nodes[`nodes/${o}`]) await this.failover(o);
  }

  /**
   * Restarts the HA VMs of a node that is down on the nodes that are up and not paused: high
   * priority first, where memory fits, keeping anti-affinity classes apart when possible.
   */
  private async failover(dead: string): Promise<void> {
    const leadership = this.leadership;
    if (!leadership || leadership.lost) return;
    const nodes = await readNodes(this.store);
    if (nodes.up[dead]) return; // it came back
    const all = Object.values(await this.store.getPrefix('vms/')).map((v) => JSON.parse(v) as HaRecord);
    const vms = all.filter((r) => r.owner === dead);
    if (!vms.length) return;
    const ctx = { store: this.store, self: this.host.name, tls: this.host.tls };
    const pnodes = await placementNodes(ctx, nodes);
    const plan = place(
      pnodes,
      all
        .filter((r) => r.owner !== dead)
        .map((r) => ({ vm: r.name, node: r.owner, antiAffinity: policyOf(r.spec).antiAffinity })),
      vms.map((r) => {
        const p = policyOf(r.spec);
        return {
          name: r.name,
          memoryMiB: r.memoryMiB,
          priority: p.priority,
          preferredOwners: p.preferredOwners,
          antiAffinity: p.antiAffinity,
          exclude: [dead],
        };
      }),
    );
    for (const p of plan) {
      let rec = vms.find((r) => r.name === p.vm)!;
      let to = p.to;
      const tried: string[] = [dead];
      if (!to) {
        this.host.events.emit('cluster.ha', { vm: rec.name, from: dead, result: `cannot restart: ${p.reason}` });
        continue;
      }
      // A node that cannot start it (its agent fails, the disk is locked…): the next candidate.
      while (to) {
        const target = { name: to, endpoint: nodes.up[to]!.endpoint };
        const next: HaRecord = { ...rec, owner: target.name, generation: rec.generation + 1 };
        // Decide only while still leader, and only if nobody changed the VM's record meanwhile.
        const ok = await this.store.txn({
          compare: [
            { key: leadership.key, value: this.host.name },
            { key: vmKey(rec.name), value: JSON.stringify(rec) },
          ],
          success: [{ type: 'put', key: vmKey(rec.name), value: JSON.stringify(next) }],
        });
        if (!ok) break;
        const client = new AgentClient({ endpoint: target.endpoint, host: target.name, credentials: this.host.tls });
        try {
          await client.call(
            peerActions.haStart,
            {
              body: {
                spec: parseVmSpec(rec.spec, `restart VM '${rec.name}'`),
                generation: next.generation,
                from: dead,
              },
            },
            { timeoutMs: 60_000 },
          );
          this.host.events.emit('cluster.ha', {
            vm: rec.name,
            from: dead,
            to: target.name,
            generation: next.generation,
            priority: policyOf(rec.spec).priority,
          });
          break;
        } catch (err) {
          this.host.events.emit('cluster.ha', {
            vm: rec.name,
            from: dead,
            to: target.name,
            generation: next.generation,
            error: messageOf(err),
          });
          tried.push(target.name);
          rec = next;
          const again = place(
            pnodes,
            [],
            [
              {
                name: rec.name,
                memoryMiB: rec.memoryMiB,
                priority: policyOf(rec.spec).priority,
                preferredOwners: policyOf(rec.spec).preferredOwners,
                antiAffinity: [],
                exclude: tried,
              },
            ],
          );
          to = again[0]?.to ?? null;
        } finally {
          client.close();
        }
      }
    }
  }
}
