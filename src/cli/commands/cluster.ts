// `ferry cluster ...`: the failover cluster (state in etcd).
import type { Command } from '@commander-js/extra-typings';
import { actions } from '../../api/actions.js';
import { FerryError } from '../../errors.js';
import { withClients, type GlobalOpts } from '../context.js';
import { printJson, printTable } from '../output.js';

type Cmd = { optsWithGlobals(): GlobalOpts };

export function registerCluster(program: Command): void {
  const cluster = program.command('cluster').description('the failover cluster');
  cluster.command('status').option('--json', 'JSON').description('nodes and their state')
    .action(async (o, cmd) => {
      await withClients((cmd as Cmd).optsWithGlobals(), async (c) => {
        let last: unknown;
        // Any member answers for the whole cluster: ask them in turn until one does.
        for (const client of c.all()) {
          try {
            const v = await client.call(actions.clusterStatus, {}, { timeoutMs: 15_000 });
            if (o.json) printJson(v);
            else printTable(['NODE', 'STATE', 'SINCE', 'ENDPOINT'], v.nodes.map((n) => [n.name, n.state, n.since, n.endpoint]));
            return;
          } catch (err) {
            last = err;
            if ((err as FerryError).code === 'E_CLUSTER_NOT_FOUND') throw err;
          }
        }
        throw last instanceof FerryError ? last : new FerryError('E_CLUSTER_UNAVAILABLE', 'Cannot read the cluster: no host answered; check ferry lab status');
      });
    });
}
