// `ferry agent`, `ferry domain`, `ferry lab`.
import path from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import { initDomain, issueCert, loadDomain } from '../../domain/ca.js';
import { labDown, labKill, labLink, labStatus, labUp } from '../../lab/lab.js';
import { printJson, printTable } from '../output.js';
import { collect, name, positiveInt } from '../parse.js';
import { InvalidInputError } from '../../errors.js';
import type { GlobalOpts } from '../context.js';

type Cmd = { optsWithGlobals(): GlobalOpts };

function labDir(o: { dir?: string }, cmd: Cmd): string {
  const d = o.dir ?? cmd.optsWithGlobals().lab ?? process.env.FERRY_LAB;
  if (!d) throw new InvalidInputError('Cannot find the lab: give --dir DIR (or --lab DIR, or set FERRY_LAB)');
  return path.resolve(d);
}

export function registerAdmin(program: Command): void {
  program
    .command('agent')
    .description('run the host agent (the daemon of one host)')
    .requiredOption('--name <name>', 'host name (its certificate must say so)', name('--name'))
    .requiredOption('--data <dir>', 'data folder')
    .requiredOption('--listen <addr:port>', 'API address')
    .option('--migration-address <addr>', 'address for migration streams (default: the API address)')
    .option('--tls-dir <dir>', 'folder with ca.crt, host.crt, host.key (default DATA/tls)')
    .action(async (o) => {
      const { runAgent } = await import('../../agent/main.js'); // fastify, sqlite: only the agent needs them
      await runAgent({
        name: o.name,
        data: o.data,
        listen: o.listen,
        ...(o.migrationAddress ? { migrationAddress: o.migrationAddress } : {}),
        ...(o.tlsDir ? { tlsDir: o.tlsDir } : {}),
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

  program
    .command('console')
    .description('serve the web console (log in with the token it prints)')
    .option('--listen <addr:port>', 'where to serve it', '127.0.0.1:8080')
    .option('--token <token>', 'login token (default: FERRY_CONSOLE_TOKEN or a new random one)')
    .option('--web-dir <dir>', 'the built web app (default web/dist)')
    .action(async (o, cmd) => {
      const { loadContext } = await import('../context.js');
      const { buildConsole, newToken } = await import('../../console/server.js');
      const { parseListen } = await import('../../agent/config.js');
      const listen = parseListen(o.listen);
      const token = o.token ?? process.env.FERRY_CONSOLE_TOKEN ?? newToken();
      const app = await buildConsole({
        context: await loadContext((cmd as Cmd).optsWithGlobals()),
        token,
        ...(o.webDir ? { webDir: path.resolve(o.webDir) } : {}),
      });
      await app.listen({ host: listen.host, port: listen.port });
      const addr = app.server.address();
      const port = typeof addr === 'object' && addr ? addr.port : listen.port;
      if (!['127.0.0.1', 'localhost', '::1'].includes(listen.host))
        process.stderr.write('warning: the console serves plain HTTP; keep it on loopback or behind a TLS proxy\n');
      process.stdout.write(`Ferry console at http://${listen.host}:${port}/\nlogin token: ${token}\n`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await app.close();
    });

  const domain = program.command('domain').description('the certificate authority hosts and admins trust');
  domain
    .command('init')
    .argument('<dir>')
    .option('--name <name>', 'domain name', 'ferry')
    .description('create a new domain (CA) in DIR')
    .action(async (dir, o) => {
      const d = await initDomain(path.resolve(dir), { name: o.name });
      process.stdout.write(`domain ${d.name} (${d.id}) created in ${d.dir}\n`);
    });
  domain
    .command('issue')
    .argument('<role>', 'host or admin')
    .argument('<name>', 'host or admin name', name('NAME'))
    .option('--dir <dir>', 'the domain folder', '.')
    .option('--ip <ip>', 'an address the host listens on (repeatable; hosts only)', collect)
    .option('--dns <name>', 'a DNS name of the host (repeatable; hosts only)', collect)
    .option('--out <dir>', 'where to write NAME.crt and NAME.key')
    .description('issue a host or admin certificate')
    .action(async (role, n, o) => {
      if (role !== 'host' && role !== 'admin')
        throw new InvalidInputError(`Cannot issue a '${role}' certificate: the role is host or admin`);
      const d = await loadDomain(path.resolve(o.dir));
      const c = await issueCert(d, role, n, {
        ...(o.out ? { outDir: path.resolve(o.out) } : {}),
        ips: o.ip ?? [],
        dnsNames: o.dns ?? [],
      });
      process.stdout.write(`${role} certificate for ${n}: ${c.cert} (key ${c.key}, CA ${c.ca})\n`);
    });

  const lab = program.command('lab').description('a local multi-host lab on this machine');
  lab
    .command('up')
    .option('--dir <dir>', 'lab folder')
    .option('--hosts <n>', 'number of hosts', positiveInt('--hosts', 26), 2)
    .option('--cluster', 'also run etcd and join a cluster')
    .option('--netns', 'one network namespace per host')
    .option('--json', 'print the status as JSON')
    .description('start the lab (idempotent: starts only what is not running)')
    .action(async (o, cmd) => {
      const st = await labUp({
        dir: labDir(o, cmd),
        hosts: o.hosts,
        cluster: !!o.cluster,
        netns: !!o.netns,
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
      const st = await labStatus(labDir(o, cmd));
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
      const r = await labKill(labDir(o, cmd as Cmd), h);
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
        const st = await labLink(labDir(o, cmd as Cmd), h, o.link, up);
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
      const r = await labDown(labDir(o, cmd as Cmd));
      process.stdout.write(`lab stopped (${r.stopped.length} process(es))\n`);
    });
}
