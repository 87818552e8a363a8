// `ferry host`, `ferry switch`, `ferry pool`: what each host offers.
import { Option, type Command } from '@commander-js/extra-typings';
import type { HostView } from '../../api/schemas.js';
import type { GlobalOpts } from '../context.js';
import { withHosts } from '../hosts.js';
import { printJson, printTable, bytes } from '../output.js';
import { collect, name, nonNegativeInt, onOff, positiveInt } from '../parse.js';
import { InvalidInputError } from '../../errors.js';
import path from 'node:path';
import { registerEnrol } from './enrol.js';

type Cmd = { optsWithGlobals(): GlobalOpts };

function printHost(h: HostView): void {
  const m = h.migration;
  const rows: Array<[string, string]> = [
    ['name', h.name],
    ['cpu', `${h.cpu.count} × ${h.cpu.model} (${h.cpu.vendor}, ${h.cpu.flags.length} flags)`],
    ['accelerator', `${h.accelerator.name} — ${h.accelerator.reason}`],
    ['qemu', `${h.qemu.version} (${h.qemu.machineTypes.length} machine types)`],
    [
      'memory',
      `${bytes(h.memory.freeBytes)} free of ${bytes(h.memory.totalBytes)}; running VMs use ${bytes(h.memory.vmBytes)}` +
        (h.memory.pagingBytes ? ` (and ${bytes(h.memory.pagingBytes)} from Smart Paging files)` : ''),
    ],
    [
      'max vm memory',
      h.memory.maxVmBytes === null || h.memory.maxVmBytes === undefined ? 'no limit' : bytes(h.memory.maxVmBytes),
    ],
    ['vms', String(h.vms)],
    [
      'migration',
      `${m.enabled ? 'enabled' : 'disabled'}, max live ${m.maxLive}, max storage ${m.maxStorage}, tls ` +
        `${m.tls ? 'on' : 'off'}${(m.memoryStreams ?? 1) > 1 ? ` (memory over ${m.memoryStreams} streams)` : ''}, ` +
        `address ${m.address}, networks ${m.networks.join(' ') || 'any'}`,
    ],
    ...h.pools.map((p): [string, string] => [
      `pool ${p.name}`,
      `${p.kind} ${p.path} — ${bytes(p.freeBytes)} free${p.usable ? '' : ' (not usable here)'}`,
    ]),
    ...h.switches.map((s): [string, string] => [
      `switch ${s.name}`,
      s.kind === 'bridge' ? `bridge ${s.bridge}` : 'user networking',
    ]),
    ...(h.certificate ? [certificateRow(h.certificate)] : []),
  ];
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [k, v] of rows) process.stdout.write(`${k.padEnd(w)}  ${v}\n`);
}

function certificateRow(c: NonNullable<HostView['certificate']>): [string, string] {
  const days = Math.floor((Date.parse(c.notAfter) - Date.now()) / 86_400_000);
  const renewal = c.renewalPending ? 'renewal request pending' : `renews from ${c.renewAt}`;
  return ['certificate', `serial ${c.serial}, valid until ${c.notAfter} (${days} days), ${renewal}`];
}

export function registerHost(program: Command): void {
  const host = program.command('host').description('hosts: capabilities, migration settings, enrolment');
  registerEnrol(host);
  host
    .command('show')
    .argument('<host>')
    .option('--json', 'JSON')
    .description('capabilities, limits, migration networks, free memory')
    .action(async (h, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const v = await c.host(h).call(actions.hostShow, {});
        if (o.json) printJson(v);
        else printHost(v);
      });
    });
  host
    .command('set')
    .argument('<host>')
    .description('change migration settings')
    .option('--max-live <n>', 'simultaneous live migrations', nonNegativeInt('--max-live', 64))
    .option('--max-storage <n>', 'simultaneous storage migrations', nonNegativeInt('--max-storage', 64))
    .option('--migration-network <cidr>', 'network for migration traffic (repeatable)', collect)
    .option('--tls <on|off>', 'TLS for migration streams', onOff('--tls'))
    .option(
      '--memory-streams <n>',
      "with TLS, send a move's memory over N parallel streams (QEMU multifd; 1: one stream)",
      positiveInt('--memory-streams', 8),
    )
    .option(
      '--max-vm-memory <mib|none>',
      'total memory (MiB) of the VMs this host runs in RAM; beyond it: Smart Paging or refused',
      maxVmMemory,
    )
    .addOption(
      new Option('--migrations <on|off>', 'accept and send migrations at all').argParser(onOff('--migrations')),
    )
    .option('--json', 'JSON')
    .action(async (h, o, cmd) => {
      const body = {
        ...(o.maxLive !== undefined ? { maxLive: o.maxLive } : {}),
        ...(o.maxStorage !== undefined ? { maxStorage: o.maxStorage } : {}),
        ...(o.migrationNetwork ? { migrationNetworks: o.migrationNetwork } : {}),
        ...(o.tls !== undefined ? { tls: o.tls } : {}),
        ...(o.memoryStreams !== undefined ? { memoryStreams: o.memoryStreams } : {}),
        ...(o.migrations !== undefined ? { enabled: o.migrations } : {}),
        ...(o.maxVmMemory !== undefined ? { maxVmMemoryMiB: o.maxVmMemory === 'none' ? null : o.maxVmMemory } : {}),
      };
      if (!Object.keys(body).length)
        throw new InvalidInputError(
          'Cannot change host settings: no setting given; use --max-live, --max-storage, --migration-network, ' +
            '--tls, --memory-streams, --migrations or --max-vm-memory',
        );
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const v = await c.host(h).call(actions.hostSet, { body });
        if (o.json) printJson(v);
        else printHost(v);
      });
    });

  const sw = program.command('switch').description('virtual switches');
  sw.command('new')
    .argument('<name>', 'switch name', name('NAME'))
    .requiredOption('--host <host>', 'host')
    .option('--bridge <br>', 'attach NICs to this Linux bridge')
    .option('--user', 'QEMU user networking (default)')
    .option('--json', 'JSON')
    .description('create a switch')
    .action(async (n, o, cmd) => {
      if (o.bridge && o.user)
        throw new InvalidInputError('Cannot create the switch: give --bridge BR or --user, not both');
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const v = await c.host(o.host).call(actions.switchCreate, {
          body: o.bridge ? { name: n, kind: 'bridge', bridge: o.bridge } : { name: n, kind: 'user' },
        });
        if (o.json) printJson(v);
        else process.stdout.write(`switch ${v.name} created on ${o.host}\n`);
      });
    });
  sw.command('list')
    .option('--host <host>', 'only this host')
    .option('--json', 'JSON')
    .description('switches of every host')
    .action(async (o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const clients = o.host ? [c.host(o.host)] : c.all();
        const rows = (
          await Promise.all(
            clients.map(async (cl) => (await cl.call(actions.switchList, {})).map((s) => ({ host: cl.host, ...s }))),
          )
        ).flat();
        if (o.json) printJson(rows);
        else
          printTable(
            ['HOST', 'NAME', 'KIND', 'BRIDGE'],
            rows.map((r) => [r.host, r.name, r.kind, r.bridge]),
          );
      });
    });
  sw.command('rm')
    .argument('<name>')
    .requiredOption('--host <host>', 'host')
    .description('remove a switch no VM uses')
    .action(async (n, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        await c.host(o.host).call(actions.switchRemove, { params: { name: n } });
        process.stdout.write(`switch ${n} removed from ${o.host}\n`);
      });
    });

  const pool = program.command('pool').description('storage pools');
  pool
    .command('list')
    .option('--host <host>', 'only this host')
    .option('--json', 'JSON')
    .description('pools of every host')
    .action(async (o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const clients = o.host ? [c.host(o.host)] : c.all();
        const rows = (
          await Promise.all(
            clients.map(async (cl) => (await cl.call(actions.poolList, {})).map((p) => ({ host: cl.host, ...p }))),
          )
        ).flat();
        if (o.json) printJson(rows);
        else
          printTable(
            ['HOST', 'POOL', 'KIND', 'PATH', 'FREE', 'GRANTED', 'USABLE'],
            rows.map((r) => [
              r.host,
              r.name,
              r.kind,
              r.path,
              bytes(r.freeBytes),
              r.kind === 'shared' ? r.granted.join(',') || 'none' : '-',
              r.usable ? 'yes' : 'no',
            ]),
          );
      });
    });
  pool
    .command('add')
    .argument('<pool>', 'pool name', name('POOL'))
    .requiredOption('--host <host>', 'host')
    .requiredOption('--path <dir>', 'the folder (mounted already)')
    .option('--shared', 'a shared pool (every host mounts the same path); grant hosts with pool grant')
    .option('--json', 'JSON')
    .description('add a storage pool to a host')
    .action(async (p, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const v = await c.host(o.host).call(actions.poolAdd, {
          body: { name: p, kind: o.shared ? 'shared' : 'local', path: path.resolve(o.path) },
        });
        if (o.json) printJson(v);
        else process.stdout.write(`pool ${p} (${v.kind}) added to ${o.host}: ${v.path}\n`);
      });
    });
  for (const verb of ['grant', 'revoke'] as const) {
    pool
      .command(verb)
      .argument('<pool>')
      .requiredOption('--host <host>', 'the host to grant or revoke')
      .option('--json', 'JSON')
      .description(verb === 'grant' ? 'let a host use a shared pool' : "take a host's access to a shared pool away")
      .action(async (p, o, cmd) => {
        await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
          const target = c.host(o.host); // the host must exist in this context
          // Any agent that sees the pool can change its grants (they live on the share).
          const via = c.all()[0] ?? target;
          const v = await via.call(verb === 'grant' ? actions.poolGrant : actions.poolRevoke, {
            params: { name: p },
            body: { host: o.host },
          });
          if (o.json) printJson(v);
          else process.stdout.write(`pool ${p}: granted to ${v.granted.join(', ') || 'no host'}\n`);
        });
      });
  }
}

/** --max-vm-memory: MiB, or 'none' for no limit (kept as 'none': commander turns a parser's null into ''). */
function maxVmMemory(v: string): number | 'none' {
  if (v === 'none') return 'none';
  if (!/^\d{1,10}$/.test(v))
    throw new InvalidInputError(
      `Cannot use --max-vm-memory '${v}': give a whole number of MiB, or 'none' for no limit`,
    );
  return Number(v);
}
