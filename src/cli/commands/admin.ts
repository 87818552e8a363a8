// `ferry agent`, `ferry console`, `ferry lab` (`ferry domain` is in domain.ts).
import path from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import { printJson, printTable } from '../output.js';
import { name, positiveInt } from '../parse.js';
import { FerryError, InvalidInputError } from '../../errors.js';
import { DEFAULT_CONFIG as HOST_CONFIG_FILE } from '../../domain/host-paths.js';
import type { AgentFlags } from '../../agent/main.js';
import type { GlobalOpts } from '../context.js';

type Cmd = { optsWithGlobals(): GlobalOpts };

// The lab (etcd, QEMU, processes) and the CA load only in the commands that use them.
const labModule = () => import('../../lab/lab.js');

function labDir(o: { dir?: string }, cmd: Cmd): string {
  const d = o.dir ?? cmd.optsWithGlobals().lab ?? process.env.FERRY_LAB;
  if (!d) throw new InvalidInputError('Cannot find the lab: give --dir DIR (or --lab DIR, or set FERRY_LAB)');
  return path.resolve(d);
}

export function registerAdmin(program: Command): void {
  program
    .command('agent')
    .description('run the host agent (the daemon of one host)')
    .option('--config <file>', `read the host's settings from this JSON file (installed hosts: ${HOST_CONFIG_FILE})`)
    .option('--name <name>', 'host name (its certificate must say so)', name('--name'))
    .option('--data <dir>', 'data folder')
    .option('--listen <addr:port>', 'API address')
    .option('--migration-address <addr>', 'address for migration streams (default: the API address)')
    .option('--tls-dir <dir>', 'folder with ca.crt, host.crt, host.key (default DATA/tls)')
    .option('--migration-ports <from-to>', 'ports for migration streams and NBD exports (default: any free port)')
    .action(async (o) => {
      const { runAgent } = await import('../../agent/main.js'); // fastify, sqlite: only the agent needs them
      const flagged = [o.name, o.data, o.listen, o.migrationAddress, o.tlsDir, o.migrationPorts].some(
        (v) => v !== undefined,
      );
      let flags: AgentFlags;
      if (o.config) {
        if (flagged)
          throw new InvalidInputError(
            `Cannot start the agent: give either --config FILE or the --name, --data, --listen flags, not both`,
          );
        const { loadHostConfig } = await import('../../agent/host-config.js');
        const c = await loadHostConfig(path.resolve(o.config));
        flags = {
          name: c.name,
          data: c.dataDir,
          listen: c.listen,
          tlsDir: c.tlsDir,
          migrationPorts: c.migrationPorts,
          ...(c.migrationAddress ? { migrationAddress: c.migrationAddress } : {}),
          settings: {
            pools: c.pools,
            switches: c.switches,
            ...(c.cluster ? { cluster: c.cluster } : {}),
            ...(c.qemu ? { qemu: c.qemu } : {}),
          },
        };
      } else {
        if (!o.name || !o.data || !o.listen)
          throw new InvalidInputError(
            `Cannot start the agent: give --config FILE (installed hosts: ${HOST_CONFIG_FILE}), ` +
              'or --name, --data and --listen',
          );
        flags = {
          name: o.name,
          data: o.data,
          listen: o.listen,
          ...(o.migrationAddress ? { migrationAddress: o.migrationAddress } : {}),
          ...(o.tlsDir ? { tlsDir: o.tlsDir } : {}),
          ...(o.migrationPorts ? { migrationPorts: o.migrationPorts } : {}),
        };
      }
      // A start-up problem the admin must fix (missing certificate, bad path) exits 2, which
      // the systemd unit does not restart: no crash loop, one clear line in the journal.
      await runAgent(flags).catch((err: unknown) => {
        if (err instanceof FerryError && err.userError && !(err instanceof InvalidInputError))
          throw new InvalidInputError(err.message, { ...err.context, code: err.code }, err);
        throw err;
      });
      // Stopped (SIGTERM). The exit watchers of running VMs would keep the process alive, yet
      // the VMs outlive the agent: leave now, or `systemctl stop` would wait for its timeout.
      process.exit(0);
    });

  // Hidden: which runtime runs this CLI (the package test checks it is /usr/lib/ferry/node).
  program
    .command('debug-runtime', { hidden: true })
    .description('print the runtime, its native modules and the web app folder as JSON')
    .action(async () => {
      const { default: Database } = await import('better-sqlite3');
      const { defaultWebDir } = await import('../../console/server.js');
      const db = new Database(':memory:');
      const sqlite = (db.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v;
      db.close();
      printJson({
        version: program.version() ?? '',
        execPath: process.execPath,
        node: process.version,
        script: process.argv[1],
        sqlite,
        webDir: defaultWebDir(),
      });
    });

  program
    .command('fence')
    .description(
      "guard a cluster host's HA VMs when its agent is gone (started by the agent; see src/cluster/fence.ts)",
    )
    .requiredOption('--data <dir>', "the agent's data folder")
    .action(async (o) => {
      const { runFence } = await import('../../cluster/fence.js');
      const ac = new AbortController();
      for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => ac.abort());
      await runFence({ dataDir: path.resolve(o.data), signal: ac.signal });
    });

  const lab = program.command('lab').description('a local multi-host lab on this machine');
  lab
    .command('up')
    .option('--dir <dir>', 'lab folder')
    .option('--hosts <n>', 'number of hosts', positiveInt('--hosts', 26), 2)
    .option('--cluster', 'also run etcd and join a cluster')
    .option('--netns', 'one network namespace per host')
    .option(
      '--package <deb>',
      'run this .deb (npm run package) on every host, each in namespaces of its own, enrolled as real hosts are',
    )
    .option('--json', 'print the status as JSON')
    .description('start the lab (idempotent: starts only what is not running)')
    .action(async (o, cmd) => {
      const st = await (
        await labModule()
      ).labUp({
        dir: labDir(o, cmd),
        hosts: o.hosts,
        cluster: !!o.cluster,
        netns: !!o.netns,
        ...(o.package ? { package: o.package } : {}),
        log: (s) => process.stderr.write(s + '\n'),
      });
      if (o.json) printJson(st);
      else {
        printTable(
          ['HOST', 'ENDPOINT', 'AGENT PID', 'UP'],
          st.hosts.map((h) => [h.name, h.endpoint, h.agentPid, h.up ? 'yes' : 'no']),
        );
        process.stdout.write(`\nexport FERRY_LAB=${st.dir}\n`);
      }
    });
  lab
    .command('status')
    .option('--dir <dir>', 'lab folder')
    .option('--json', 'JSON')
    .description('hosts and their agents')
    .action(async (o, cmd) => {
      const st = await (await labModule()).labStatus(labDir(o, cmd));
      if (o.json) printJson(st);
      else if (st.hosts.some((h) => h.netns)) {
        const link = (v: boolean | undefined): string => (v ? 'up' : 'cut');
        printTable(
          ['HOST', 'ENDPOINT', 'AGENT PID', 'UP', 'NETNS', 'MIGRATION ADDRESS', 'MGMT LINK', 'MIGRATION LINK'],
          st.hosts.map((h) => [
            h.name,
            h.endpoint,
            h.agentPid,
            h.up ? 'yes' : 'no',
            h.netns,
            h.migrationAddress,
            link(h.links?.management),
            link(h.links?.migration),
          ]),
        );
      } else
        printTable(
          ['HOST', 'ENDPOINT', 'AGENT PID', 'UP', 'DATA'],
          st.hosts.map((h) => [h.name, h.endpoint, h.agentPid, h.up ? 'yes' : 'no', h.dataDir]),
        );
    });
  lab
    .command('kill')
    .argument('<host>')
    .option('--dir <dir>', 'lab folder')
    .description("power loss: SIGKILL a host's agent and its QEMUs")
    .action(async (h, o, cmd) => {
      const r = await (await labModule()).labKill(labDir(o, cmd as Cmd), h);
      process.stdout.write(`${h}: killed ${r.killed.length} process(es)\n`);
    });
  // --netns labs: pull and plug one host's cable (the root-namespace end of its veth).
  for (const [verb, up] of [
    ['cut', false],
    ['restore', true],
  ] as const) {
    lab
      .command(verb)
      .argument('<host>')
      .option('--dir <dir>', 'lab folder')
      .option('--link <link>', 'management or migration', 'migration')
      .description(
        up
          ? "restore a link cut with 'lab cut'"
          : 'cut one link of one host of a --netns lab (its traffic stalls, as with a pulled cable)',
      )
      .action(async (h, o, cmd) => {
        if (o.link !== 'management' && o.link !== 'migration')
          throw new InvalidInputError(`Cannot ${verb} link '${o.link}': use --link management or --link migration`);
        const st = await (await labModule()).labLink(labDir(o, cmd as Cmd), h, o.link, up);
        process.stdout.write(
          `${h}: management ${st.management ? 'up' : 'cut'}, migration ${st.migration ? 'up' : 'cut'}\n`,
        );
      });
  }
  lab
    .command('down')
    .option('--dir <dir>', 'lab folder')
    .description('stop everything the lab started')
    .action(async (o, cmd) => {
      const r = await (await labModule()).labDown(labDir(o, cmd as Cmd));
      process.stdout.write(`lab stopped (${r.stopped.length} process(es))\n`);
    });
}
