// `ferry cluster ...`: the failover cluster (state in etcd). Any node answers for the whole
// cluster, so commands ask the hosts of the context in turn until one does.
import { PRIORITIES } from '../../api/defaults.js';
import { InvalidArgumentError, Option, type Command } from '@commander-js/extra-typings';
import { failbackProblem } from '../../cluster/failback.js';
import type { AgentClient } from '../../api/client.js';
import type { BatchView, ClusterView } from '../../api/schemas.js';
import { FerryError, InvalidInputError } from '../../errors.js';
import type { Clients, GlobalOpts } from '../context.js';
import { loadActions, withHosts } from '../hosts.js';
import { printJson, printTable } from '../output.js';
import { collect, onOff, positiveInt } from '../parse.js';
import { EXIT } from '../exit.js';
import type { BatchWatch } from '../batch-follow.js';

type Cmd = { optsWithGlobals(): GlobalOpts };

export const FAILBACK_HELP =
  'move it back to its first preferred owner when that node returns: immediately, never (default) or ' +
  "in a window HH:MM-HH:MM of the leader's local time (may cross midnight)";

/** --failback: checked here, so a typo changes nothing anywhere. */
export function failbackFlag(v: string): string {
  const bad = failbackProblem(v);
  if (bad) throw new InvalidArgumentError(`Cannot use --failback: ${bad}`);
  return v;
}
const PRIORITY = PRIORITIES;

/** Runs `fn` against the first host that answers as a cluster member. */
async function anyMember<T>(c: Clients, fn: (client: AgentClient) => Promise<T>): Promise<T> {
  let last: unknown;
  for (const client of c.all()) {
    try {
      return await fn(client);
    } catch (err) {
      last = err;
      const code = err instanceof FerryError ? err.code : '';
      // A user error is the same whichever node says it; a host that cannot answer is not.
      // A node that may not make cluster decisions: another one may.
      if (code === 'E_CLUSTER_NOT_ELIGIBLE') continue;
      if (
        code === 'E_CLUSTER_NOT_FOUND' ||
        ((err as FerryError).userError && !/UNAVAILABLE|UNREACHABLE|CONNECT/.test(code))
      )
        throw err;
    }
  }
  throw last instanceof FerryError
    ? last
    : new FerryError('E_CLUSTER_UNAVAILABLE', 'Cannot reach the cluster: no host answered; check ferry lab status');
}

function splitList(v: string[] | undefined): string[] | undefined {
  return v
    ?.flatMap((x) => x.split(','))
    .map((x) => x.trim())
    .filter(Boolean);
}

export function printStatus(v: ClusterView): void {
  process.stdout.write(
    `cluster ${v.name} · leader ${v.leader ?? '(none)'} · limits: ${v.limits.maxOutgoing} out / ` +
      `${v.limits.maxIncoming} in per node, ${v.limits.maxTotal} in the cluster` +
      `${v.limits.adaptive ? ' (adaptive: drains and fail-backs learn how many run at once)' : ''}\n\n`,
  );
  printTable(
    ['NODE', 'STATE', 'SINCE', 'PAUSED', 'ENDPOINT'],
    v.nodes.map((n) => [
      n.name,
      n.state,
      n.since,
      n.paused ? `${n.paused.reason === 'drain' ? 'drained' : 'by admin'} at ${n.paused.at}` : '-',
      n.endpoint,
    ]),
  );
  if (v.vms.length) {
    process.stdout.write('\n');
    printTable(
      ['CLUSTERED VM', 'OWNER', 'PRIORITY', 'PREFERRED', 'ANTI-AFFINITY', 'FAILBACK', 'GEN'],
      v.vms.map((m) => [
        m.name,
        m.restartFrom ? `${m.owner} (restarting, from ${m.restartFrom})` : m.owner,
        m.priority,
        m.preferredOwners.join(',') || '-',
        m.antiAffinity.join(',') || '-',
        m.away ? `${m.failback} (away from ${m.away})` : m.failback,
        m.generation,
      ]),
    );
  }
  process.stdout.write('\n');
  if (v.queue.length)
    printTable(
      ['QUEUE', 'VM', 'FROM', 'TO', 'PRIORITY', 'STATE', 'POS', 'FOR'],
      v.queue.map((q) => [
        q.id.slice(0, 8),
        q.vm,
        q.from,
        q.to,
        q.priority,
        q.state === 'admitted' ? 'moving' : 'queued',
        q.position ?? '-',
        q.batch ?? '-',
      ]),
    );
  else process.stdout.write('queue: empty\n');
  for (const b of v.batches) {
    process.stdout.write(
      `\n${b.kind} of ${b.node}: ${b.state} (started ${b.startedAt}${b.finishedAt ? `, ended ${b.finishedAt}` : ''})\n`,
    );
    printBatchItems(b);
  }
}

function printBatchItems(b: BatchView): void {
  if (b.items.length)
    printTable(
      ['VM', 'FROM', 'TO', 'PRIORITY', 'RESULT', 'DETAIL'],
      b.items.map((i) => [i.vm, i.from, i.to ?? '-', i.priority, i.state, i.reason ?? '']),
    );
}

export function registerCluster(program: Command): void {
  const cluster = program.command('cluster').description('the failover cluster');

  cluster
    .command('status')
    .option('--json', 'JSON')
    .description('nodes, clustered VMs, the queue, drains')
    .action(async (o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const v = await anyMember(c, (client) => client.call(actions.clusterStatus, {}, { timeoutMs: 15_000 }));
        if (o.json) printJson(v);
        else printStatus(v);
      });
    });

  cluster
    .command('drain')
    .argument('<node>')
    .description('move every VM off NODE (by priority, through the cluster queue), then keep it paused')
    .option('--dry-run', 'show the plan and every blocker; change nothing')
    .option('--no-wait', 'return once the drain has started')
    .option('--json', 'JSON')
    .action(async (node, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), (c, actions) =>
        watchingIf(c, !o.dryRun && o.wait, async (w) => {
          const r = await anyMember(c, (client) =>
            client.call(
              actions.clusterDrain,
              { params: { name: node }, body: { dryRun: Boolean(o.dryRun) } },
              { timeoutMs: 300_000 },
            ),
          );
          if (o.dryRun) {
            if (o.json) printJson(r.plan);
            else {
              printTable(
                ['VM', 'STATE', 'MEMORY', 'PRIORITY', 'TO', 'HOW', 'BLOCKERS / WARNINGS'],
                r.plan.items.map((i) => [
                  i.vm,
                  i.state,
                  `${i.memoryMiB} MiB`,
                  i.priority,
                  i.to ?? 'BLOCKED',
                  i.kind ?? '-',
                  [...i.blockers.map((b) => `${b.code}: ${b.message}`), ...i.warnings].join(' | ') || '-',
                ]),
              );
              process.stdout.write(
                `\n${r.plan.movable} VM(s) can move, ${r.plan.blocked} blocked; nothing was changed (dry run)\n`,
              );
            }
            return;
          }
          if (!w) {
            if (o.json) printJson(r.batch);
            else
              process.stdout.write(
                `drain of ${node} started: ${r.plan.movable} VM(s) to move, ${r.plan.blocked} blocked; node paused. ` +
                  "Follow it with 'ferry cluster status'\n",
              );
            return;
          }
          if (!r.batch)
            throw new FerryError(
              'E_BATCH_GONE',
              `Cannot follow the drain of ${node}: the agent started none; see 'ferry cluster status'`,
            );
          const done = await followBatch(w, r.batch, Boolean(o.json));
          if (o.json) printJson(done);
          else {
            printBatchItems(done);
            process.stdout.write(
              `drain of ${node}: ${done.state}; ${node} stays paused until 'ferry cluster resume ${node}'\n`,
            );
          }
          if (done.state !== 'completed') process.exitCode = EXIT.failed;
        }),
      );
    });

  cluster
    .command('pause')
    .argument('<node>')
    .description(
      'NODE takes no new VMs (placement, HA restarts, queued moves, fail-back, moves into it are refused); ' +
        'its VMs keep running there. Undo with resume',
    )
    .option('--json', 'JSON')
    .action(async (node, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const r = await anyMember(c, (client) =>
          client.call(actions.clusterPause, { params: { name: node } }, { timeoutMs: 30_000 }),
        );
        if (o.json) printJson(r);
        else
          process.stdout.write(
            (r.changed
              ? `${node} paused: it takes no new VMs; its VMs keep running there`
              : `${node} was already paused (${r.reason === 'drain' ? 'drained' : 'by an administrator'} at ${r.at})`) +
              `. Undo with 'ferry cluster resume ${node}'\n`,
          );
      });
    });

  cluster
    .command('resume')
    .argument('<node>')
    .description('take VMs on NODE again after a pause or a drain (cancels what its drain still has queued)')
    .option('--failback', 'move back the VMs its drain moved away and those that prefer it')
    .option('--no-wait', 'return once the fail-back has started')
    .option('--json', 'JSON')
    .action(async (node, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), (c, actions) =>
        watchingIf(c, Boolean(o.failback) && o.wait, async (w) => {
          const r = await anyMember(c, (client) =>
            client.call(
              actions.clusterResume,
              { params: { name: node }, body: { failback: Boolean(o.failback) } },
              { timeoutMs: 120_000 },
            ),
          );
          if (!w || !r.batch) {
            if (o.json) printJson(r);
            else
              process.stdout.write(
                `${node} resumed` +
                  (r.batch?.kind === 'drain' && r.batch.state === 'aborted'
                    ? ' (its drain stopped: queued moves cancelled)'
                    : '') +
                  (o.failback ? `; fail-back ${r.batch?.state ?? 'started'}` : '') +
                  '\n',
              );
            return;
          }
          const done = await followBatch(w, r.batch, Boolean(o.json));
          if (o.json) printJson(done);
          else {
            printBatchItems(done);
            process.stdout.write(`fail-back to ${node}: ${done.state}\n`);
          }
          if (done.state !== 'completed') process.exitCode = EXIT.failed;
        }),
      );
    });

  cluster
    .command('add-vm')
    .argument('<vm>')
    .description('make a VM clustered (highly available); again to change its settings')
    .addOption(new Option('--priority <p>', 'start and drain order').choices(PRIORITY))
    .option('--preferred-owner <node>', 'preferred node, in order (repeatable or comma-separated)', collect)
    .option('--anti-affinity <class>', 'keep apart from VMs of this class (repeatable)', collect)
    .option('--failback <when>', FAILBACK_HELP, failbackFlag)
    .option('--json', 'JSON')
    .action(async (vm, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const { client } = await c.locate(vm);
        const pref = splitList(o.preferredOwner);
        const anti = splitList(o.antiAffinity);
        const v = await client.call(
          actions.clusterAddVm,
          {
            body: {
              vm,
              ...(o.priority ? { priority: o.priority } : {}),
              ...(pref ? { preferredOwners: pref } : {}),
              ...(anti ? { antiAffinity: anti } : {}),
              ...(o.failback ? { failback: o.failback } : {}),
            },
          },
          { timeoutMs: 30_000 },
        );
        if (o.json) printJson(v);
        else process.stdout.write(`${vm} is clustered (on ${v.host})\n`);
      });
    });

  cluster
    .command('remove-vm')
    .argument('<vm>')
    .description('take a VM out of the cluster (it keeps running where it is)')
    .option('--json', 'JSON')
    .action(async (vm, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const { client } = await c.locate(vm);
        const v = await client.call(actions.clusterRemoveVm, { params: { name: vm } }, { timeoutMs: 30_000 });
        if (o.json) printJson(v);
        else process.stdout.write(`${vm} is no longer clustered (stays on ${v.host})\n`);
      });
    });

  cluster
    .command('set')
    .description('limits of the cluster queue')
    .option('--max-outgoing <n>', 'moves leaving one node at once', positiveInt('--max-outgoing', 64))
    .option('--max-incoming <n>', 'moves arriving on one node at once', positiveInt('--max-incoming', 64))
    .option('--max-total <n>', 'moves in the cluster at once', positiveInt('--max-total', 1024))
    .option(
      '--adaptive <on|off>',
      'drains and fail-backs learn how many moves to run at once, up to the limits (default on)',
      onOff('--adaptive'),
    )
    .option('--json', 'JSON')
    .action(async (o, cmd) => {
      if (
        o.maxOutgoing === undefined &&
        o.maxIncoming === undefined &&
        o.maxTotal === undefined &&
        o.adaptive === undefined
      )
        throw new InvalidInputError(
          'Cannot change the cluster limits: no limit given; use --max-outgoing, --max-incoming, --max-total ' +
            'or --adaptive',
        );
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const body = {
          ...(o.maxOutgoing !== undefined ? { maxOutgoing: o.maxOutgoing } : {}),
          ...(o.maxIncoming !== undefined ? { maxIncoming: o.maxIncoming } : {}),
          ...(o.maxTotal !== undefined ? { maxTotal: o.maxTotal } : {}),
          ...(o.adaptive !== undefined ? { adaptive: o.adaptive } : {}),
        };
        const v = await anyMember(c, (client) => client.call(actions.clusterLimits, { body }, { timeoutMs: 15_000 }));
        if (o.json) printJson(v);
        else
          process.stdout.write(
            `limits: ${v.maxOutgoing} out / ${v.maxIncoming} in per node, ${v.maxTotal} in the cluster` +
              `${v.adaptive ? ', adaptive' : ', fixed'}\n`,
          );
      });
    });

  for (const create of [true, false]) {
    cluster
      .command(create ? 'create' : 'join')
      .argument('<name>')
      .description(
        create ? 'create a cluster on etcd with this host as its first node' : 'join this host to an existing cluster',
      )
      .requiredOption('--host <host>', 'the host that joins')
      .requiredOption('--etcd <url>', 'etcd client URL, https (repeatable or comma-separated)', collect)
      .option('--lead', 'the host may lead (make cluster decisions, hold HA VMs); the default for a new host')
      .option('--no-lead', 'the host may not lead (run again with --lead to change it)')
      .option('--json', 'JSON')
      .action(async (name, o, cmd) => {
        await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
          const endpoints = splitList(o.etcd) ?? [];
          // A host already in another cluster is refused before anything changes in etcd.
          const cur = await c
            .host(o.host)
            .call(actions.clusterStatus, {}, { timeoutMs: 15_000 })
            .catch((err: unknown) => {
              if ((err as Partial<FerryError>).code === 'E_CLUSTER_NOT_FOUND') return null;
              throw err;
            });
          if (cur && cur.name !== name)
            throw new FerryError(
              'E_CLUSTER_EXISTS',
              `Cannot join cluster '${name}': host '${o.host}' is in cluster '${cur.name}'; ` +
                'a host belongs to one cluster',
              {},
            );
          // With the administrator's credential: etcd's access control, the host's etcd user and role.
          const { prepareJoin } = await import('../../cluster/auth.js');
          await prepareJoin(endpoints, c.ctx.credentials, {
            cluster: name,
            host: o.host,
            create,
            ...(o.lead === undefined ? {} : { lead: o.lead }),
          });
          const v = await c
            .host(o.host)
            .call(actions.clusterJoin, { body: { name, create, endpoints } }, { timeoutMs: 60_000 });
          if (o.json) printJson(v);
          else
            process.stdout.write(
              `${o.host} ${create ? 'created' : 'joined'} cluster ${name} (${v.nodes.length} node(s))\n`,
            );
        });
      });
  }
}

/**
 * Opens the event streams of the context's hosts (when the command waits for a batch) before
 * `start` runs, so that no event of the batch it starts is missed; closes them after.
 */
async function watchingIf<T>(c: Clients, wait: boolean, start: (w: BatchWatch | null) => Promise<T>): Promise<T> {
  if (!wait) return start(null);
  const [{ BatchWatch }, actions] = await Promise.all([import('../batch-follow.js'), loadActions()]);
  const w = await BatchWatch.open({
    clients: c.all(),
    readCluster: () => anyMember(c, (client) => client.call(actions.clusterStatus, {}, { timeoutMs: 15_000 })),
  });
  try {
    return await start(w);
  } finally {
    w.close();
  }
}

/** Follows a drain or fail-back to its end, printing each VM's result as it comes. */
async function followBatch(w: BatchWatch, first: BatchView, json: boolean): Promise<BatchView> {
  const { BatchLines } = await import('../batch-follow.js');
  const lines = new BatchLines();
  return w.follow(first, (b) => {
    if (!json) lines.batch(b);
  });
}
