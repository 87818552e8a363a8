// Automatic fail-back, the leader's side: every few seconds (and whenever a node comes, goes,
// is paused or resumed) it reads the nodes, the clustered VMs and the batches, lets the pure
// decision (failback.ts) say which VMs go home now, and records one fail-back batch per home
// node; the BatchRunner then moves them live through the cluster queue, as for
// 'ferry cluster resume NODE --failback'. Which VMs are away is this leader's memory: a new
// leader learns it again from what it sees (a VM whose home is down or paused).
import type { Emit } from '../api/events.js';
import { messageOf } from '../errors.js';
import type { Leadership } from './store.js';
import * as K from './keys.js';
import { mayLead, policyOf, type Batch } from './model.js';
import type { ClusterCtx } from './context.js';
import { readHaRecords, readNodes } from './records.js';
import { AwayVms, localMinutes } from './failback.js';
import { coalesced } from '../util/coalesce.js';

export class FailbackRunner {
  private stops: Array<() => Promise<void>> = [];
  private timer: NodeJS.Timeout | null = null;
  readonly away = new AwayVms();

  constructor(
    private ctx: ClusterCtx,
    private leadership: Leadership,
    private onEvent: Emit,
    /** The clock (a test sets it); windows are read in this process's local time. */
    private now: () => Date = () => new Date(),
  ) {}

  async start(): Promise<void> {
    for (const p of [K.nodes.prefix, K.paused.prefix, K.vms.prefix])
      this.stops.push(await this.ctx.store.watchPrefix(p, () => void this.pass()));
    // A window opens with no event: the clock is read every few seconds.
    this.timer = setInterval(() => void this.pass(), 5000);
    this.timer.unref();
    void this.pass();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const s of this.stops.splice(0)) await s().catch(() => undefined);
  }

  readonly pass = coalesced(async () => {
    if (this.leadership.lost) return;
    try {
      await this.decide();
    } catch (err) {
      this.onEvent('cluster.batch-error', { message: `automatic fail-back: ${messageOf(err)}` });
    }
  });

  private async decide(): Promise<void> {
    const [nodes, records, batches] = await Promise.all([
      readNodes(this.ctx.store, this.ctx.onBad),
      readHaRecords(this.ctx.store, this.ctx.onBad),
      K.readAll(this.ctx.store, K.batches, this.ctx.onBad),
    ]);
    const due = this.away.decide(
      records.map((r) => {
        const pol = policyOf(r.spec);
        return { name: r.name, owner: r.owner, preferredOwners: pol.preferredOwners, failback: pol.failback };
      }),
      Object.keys(nodes.members).map((name) => ({
        name,
        up: !!nodes.up[name],
        paused: nodes.paused.has(name),
        mayHold: mayLead(nodes, name),
        busy: batches.get(name)?.value.state === 'running',
      })),
      localMinutes(this.now()),
    );
    for (const [node, vms] of due) {
      const cur = batches.get(node);
      const now = this.now().toISOString();
      const batch: Batch = {
        node,
        kind: 'failback',
        state: 'running',
        startedAt: now,
        finishedAt: null,
        items: vms.map(({ vm, from }) => ({
          vm,
          from,
          priority: policyOf(records.find((r) => r.name === vm)?.spec).priority,
          to: node,
          state: 'pending' as const,
          migrationId: null,
          attempts: 0,
          reason: 'automatic fail-back',
        })),
      };
      const key = K.batches.key(node);
      const ok = await this.ctx.store.txn({
        compare: [
          { key: this.leadership.key, value: this.leadership.candidateId },
          cur ? { key, value: cur.raw } : { key, version: 0 },
        ],
        success: [{ type: 'put', key, value: K.batches.encode(batch) }],
      });
      // Recorded: at most once per return, whatever the moves' result. Not recorded (the batch
      // changed meanwhile): the next pass decides again.
      if (ok) for (const { vm } of vms) this.away.done(vm);
    }
  }
}
