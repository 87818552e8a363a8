// Automatic fail-back, the leader's side: every few seconds (and whenever a node comes, goes,
// is paused or resumed) it reads the nodes, the clustered VMs and the batches, lets the pure
// decision (failback.ts) say which VMs go home now, and records one fail-back batch per home
// node; the BatchRunner then moves them live through the cluster queue, as for
// 'ferry cluster resume NODE --failback'. Which VMs are away is kept in their cluster records
// (an HA restart off a dead home marks it in the same write), so a new leader goes on where the
// last one stopped.
import type { Emit } from '../api/events.js';
import { messageOf } from '../errors.js';
import type { Leadership } from './store.js';
import * as K from './keys.js';
import { mayLead, policyOf, type Batch } from './model.js';
import type { ClusterCtx } from './context.js';
import { readNodes, swapHaRecord } from './records.js';
import { AwayVms, localMinutes, withAway } from './failback.js';
import { coalesced } from '../util/coalesce.js';

export class FailbackRunner {
  private stops: Array<() => Promise<void>> = [];
  /** What was last said of each VM still away (an event only when it changes). */
  private said = new Map<string, string>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private ctx: ClusterCtx,
    private leadership: Leadership,
    private onEvent: Emit,
    /**
     * A node whose lease lives but whose beat stood still (beats.ts): down for fail-over, so not
     * back for fail-back either (a move into it would fail and use up the VM's one return).
     */
    private stale: (node: string) => boolean,
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
    const { store, onBad } = this.ctx;
    const [nodes, vms, batches] = await Promise.all([
      readNodes(store, onBad),
      K.readAll(store, K.vms, onBad),
      K.readAll(store, K.batches, onBad),
    ]);
    const records = [...vms.values()];
    const away = new AwayVms(records.flatMap((e) => (e.value.away ? [[e.name, e.value.away] as const] : [])));
    const waiting = new Map<string, string>();
    const due = away.decide(
      records.map(({ value: r }) => {
        const pol = policyOf(r.spec);
        return { name: r.name, owner: r.owner, preferredOwners: pol.preferredOwners, failback: pol.failback };
      }),
      Object.keys(nodes.members).map((name) => {
        const batch = batches.get(name)?.value;
        const moved = batch?.kind === 'drain' ? batch.items.filter((i) => i.state === 'moved') : [];
        return {
          name,
          up: !!nodes.up[name] && !this.stale(name),
          paused: nodes.paused.has(name),
          mayHold: mayLead(nodes, name),
          busy: batch?.state === 'running',
          drained: moved.map((i) => i.vm),
        };
      }),
      localMinutes(this.now()),
      waiting,
    );
    // Every write is fenced by this leadership: a deposed leader changes nothing.
    const fence = { key: this.leadership.key, value: this.leadership.candidateId };
    const started = new Set<string>();
    for (const [node, list] of due) {
      const cur = batches.get(node);
      const now = this.now().toISOString();
      const batch: Batch = {
        node,
        kind: 'failback',
        state: 'running',
        startedAt: now,
        finishedAt: null,
        items: list.map(({ vm, from }) => ({
          vm,
          from,
          priority: policyOf(vms.get(vm)?.value.spec).priority,
          to: node,
          state: 'pending' as const,
          migrationId: null,
          attempts: 0,
          reason: 'automatic fail-back',
        })),
      };
      const recs = list.flatMap(({ vm }) => vms.get(vm) ?? []);
      const key = K.batches.key(node);
      // The batch and the end of its VMs' away marks in one write: at most once per return,
      // whatever the moves' result. Not written (a record or the batch changed meanwhile): the
      // next pass decides again.
      const ok = await store.txn({
        compare: [
          fence,
          cur ? { key, value: cur.raw } : { key, version: 0 },
          ...recs.map((e) => ({ key: e.key, value: e.raw })),
        ],
        success: [
          { type: 'put', key, value: K.batches.encode(batch) },
          ...recs.map((e) => ({ type: 'put' as const, key: e.key, value: K.vms.encode(withAway(e.value, undefined)) })),
        ],
      });
      if (ok) for (const { vm } of list) started.add(vm);
      else
        for (const { vm } of list)
          waiting.set(vm, 'the cluster changed while its batch was written; the next pass decides again');
    }
    this.say(waiting, away);
    // The marks this pass set (home unavailable) or ended (home again, or 'never').
    for (const e of records) {
      const want = away.get(e.name);
      if (started.has(e.name) || want === e.value.away) continue;
      await swapHaRecord(store, e, withAway(e.value, want), fence);
    }
  }

  /** Says why each VM still away waits (once per reason); a VM that left the list is forgotten. */
  private say(waiting: Map<string, string>, away: AwayVms): void {
    for (const vm of [...this.said.keys()]) if (!waiting.has(vm)) this.said.delete(vm);
    for (const [vm, reason] of waiting) {
      const home = away.get(vm);
      if (home === undefined || this.said.get(vm) === reason) continue;
      this.said.set(vm, reason);
      this.onEvent('cluster.failback-waiting', { vm, home, reason });
    }
  }
}
