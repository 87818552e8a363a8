// `ferry vm ...`: create and run VMs on the hosts of a lab or context.
import { PRIORITIES } from '../../api/defaults.js';
import { Option, type Command } from '@commander-js/extra-typings';
import type { VmView } from '../../api/schemas.js';
import type { Clients, GlobalOpts } from '../context.js';
import { FAILBACK_HELP, failbackFlag } from './cluster.js';
import { withHosts } from '../hosts.js';
import { printJson, printTable, bytes } from '../output.js';
import { collect, diskFlag, dirtyFlag, memoryMiB, name, positiveInt, sizeFlag, onOff } from '../parse.js';
import path from 'node:path';
import fsp from 'node:fs/promises';
import { InvalidInputError, messageOf } from '../../errors.js';
import { DISPLAYS, FIRMWARES, IMAGE_FORMATS } from '../../api/common.js';

type Cmd = { optsWithGlobals(): GlobalOpts };

/** Processor compatibility: the newest baseline model every host of the lab/context can give (said on stderr). */
async function compatModel(c: Clients): Promise<string> {
  const [{ peerActions }, { chooseBaseline, usableModelNames }] = await Promise.all([
    import('../../api/peer-actions.js'),
    import('../../qemu/cpu-models.js'),
  ]);
  const perHost = await Promise.all(
    c.all().map(async (cl) => usableModelNames(await cl.call(peerActions.cpuModels, {}, { timeoutMs: 60_000 }))),
  );
  const model = chooseBaseline(perHost);
  process.stderr.write(
    `--cpu compat: ${model} (usable on ${c
      .all()
      .map((x) => x.host)
      .join(', ')})\n`,
  );
  return model;
}

function printVm(v: VmView): void {
  const rows: Array<[string, string]> = [
    ['name', v.name],
    ['id', v.id],
    ['host', v.host],
    ['state', v.state + (v.pid ? ` (pid ${v.pid})` : '')],
    ['memory', `${v.memoryMiB} MiB`],
    ['cpus', `${v.cpus} × ${v.cpuModel}`],
    ['machine', v.machine],
    ['firmware', v.firmware === 'uefi' ? 'UEFI (OVMF)' : 'BIOS (SeaBIOS)'],
    ['boot', v.bootOrder.join(', ') || '(firmware default)'],
    ['display', v.display === 'vga' ? 'VGA (VNC)' : 'none (serial only)'],
    ['guest', v.guest],
    ['config', v.configPath],
    ['checkpoints', `${v.checkpointPath} (${v.checkpoints.length} checkpoint${v.checkpoints.length === 1 ? '' : 's'})`],
    ['paging', v.pagingPath],
    ...v.disks.map((d): [string, string] => [
      d.id,
      `${d.path} (${d.role === 'uefi-vars' ? 'UEFI variable store' : d.format}, ${bytes(d.virtualSizeBytes)}` +
        `${d.pool ? `, pool ${d.pool}` : ''})`,
    ]),
    ...v.cdroms.map((c): [string, string] => [
      c.id,
      `${c.path} (${c.role === 'cloud-init' ? 'cloud-init seed' : 'CD-ROM'}${c.pool ? `, pool ${c.pool}` : ''})`,
    ]),
    ...v.nics.map((n): [string, string] => [n.id, `switch ${n.switch}, ${n.mac}`]),
    ['ha', v.ha ? 'yes' : 'no'],
    ['smart paging', v.smartPaging ? 'allowed' : 'not allowed'],
    ...(v.memoryBacking
      ? [
          ['memory backing', v.memoryBacking === 'paging-file' ? `Smart Paging file ${v.pagingFile ?? ''}` : 'RAM'] as [
            string,
            string,
          ],
        ]
      : []),
    ...(v.arrival ? [['last arrival', v.arrival.message] as [string, string]] : []),
  ];
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [k, val] of rows) process.stdout.write(`${k.padEnd(w)}  ${val}\n`);
}

export function registerVm(program: Command): void {
  const vm = program.command('vm').description('virtual machines');

  vm.command('new')
    .description('create a VM on a host')
    .argument('<name>', 'VM name', name('NAME'))
    .requiredOption('--host <host>', 'host to create it on')
    .option('--memory <size>', 'memory, e.g. 256M or 1G', memoryMiB('--memory'), 256)
    .option('--cpus <n>', 'virtual CPUs', positiveInt('--cpus', 255), 1)
    .option('--cpu <model>', "QEMU CPU model (default qemu64); 'compat': the newest model every host supports")
    .option('--path <dir>', "the VM's folder (default: the host's local pool)")
    .option('--disk <spec>', 'new disk SIZE[,format=qcow2|raw|vhdx|vpc][,pool=P] (repeatable)', diskFlag)
    .option('--attach <file>', 'attach an existing disk image (repeatable)', collect)
    .addOption(new Option('--guest <kind>', 'test guest').choices(['probe', 'bootblock'] as const))
    .option('--kernel <file>', 'boot this kernel (copied into the VM folder)')
    .option('--initrd <file>', 'initrd for --kernel')
    .option('--append <cmdline>', 'kernel command line for --kernel')
    .option('--image <file>', 'copy this disk image (qcow2, raw, vmdk, vhdx, vpc, ...; in a pool) as the first disk')
    .option('--disk-size <size>', 'grow the copy of --image to this size, e.g. 20G', sizeFlag('--disk-size'))
    .addOption(
      new Option('--disk-format <format>', 'format of the copy of --image (default qcow2)').choices(IMAGE_FORMATS),
    )
    .option('--cdrom <iso>', 'attach an ISO image in a pool as a CD-ROM (repeatable)', collect)
    .addOption(new Option('--firmware <firmware>', 'bios (SeaBIOS, default) or uefi (OVMF)').choices(FIRMWARES))
    .option('--machine <type>', "'pc' (default), 'q35', or a versioned type such as pc-q35-7.2")
    .option('--cloud-init <user-data>', 'a cloud-init user-data file: a NoCloud seed is made in the VM folder')
    .option('--cloud-init-network <file>', 'cloud-init network-config (version 1 or 2) for --cloud-init')
    .option('--cloud-init-meta <file>', 'cloud-init meta-data for --cloud-init (default: a generated instance-id)')
    .option('--boot <order>', 'boot order, e.g. disk,cdrom,net or device ids (default: disk,cdrom)')
    .addOption(new Option('--display <display>', 'vga (a screen over VNC, default) or none').choices(DISPLAYS))
    .option('--switch <name>', 'connect a NIC to this switch (repeatable)', collect)
    .option('--ha', 'highly available (clustered VM)', false)
    .option(
      '--smart-paging',
      'on a host without room for its memory, back its RAM with a file in its paging folder',
      false,
    )
    .addOption(new Option('--priority <p>', 'with --ha: restart and drain order').choices(PRIORITIES))
    .option('--preferred-owner <node>', 'with --ha: preferred node, in order (repeatable or comma-separated)', collect)
    .option('--anti-affinity <class>', 'with --ha: keep apart from VMs of this class (repeatable)', collect)
    .option('--start', 'start it once created', false)
    .option('--probe-dirty <spec>', 'probe guest: dirty MIB of memory [at MIBPS]', dirtyFlag)
    .option('--probe-no-writer', 'probe guest: no disk writer', false)
    .option('--json', 'print the VM as JSON')
    .action(async (vmName, o, cmd) => {
      const g = (cmd as Cmd).optsWithGlobals();
      const abs = (p: string, flag: string): string => {
        if (!p) throw new InvalidInputError(`Cannot use ${flag} '': give a path`);
        return path.resolve(p);
      };
      if ((o.probeDirty || o.probeNoWriter) && o.guest !== 'probe')
        throw new InvalidInputError('Cannot use --probe-dirty or --probe-no-writer without --guest probe');
      const split = (v: string[] | undefined): string[] | undefined =>
        v
          ?.flatMap((x) => x.split(','))
          .map((x) => x.trim())
          .filter(Boolean);
      const pref = split(o.preferredOwner);
      const anti = split(o.antiAffinity);
      if ((o.priority || pref || anti) && !o.ha)
        throw new InvalidInputError(
          'Cannot use --priority, --preferred-owner or --anti-affinity without --ha: they apply to clustered ' +
            'VMs; add --ha',
        );
      if (o.guest && o.kernel)
        throw new InvalidInputError(
          'Cannot use --kernel with --guest: the test guests bring their own kernel; drop one of them',
        );
      const readText = async (file: string | undefined, flag: string): Promise<string | undefined> => {
        if (file === undefined) return undefined;
        return fsp.readFile(file, 'utf8').catch((err: unknown) => {
          throw new InvalidInputError(`Cannot read ${flag} ${file}: ${messageOf(err)}; give a readable file`);
        });
      };
      if ((o.cloudInitNetwork || o.cloudInitMeta) && !o.cloudInit)
        throw new InvalidInputError('Cannot use --cloud-init-network or --cloud-init-meta without --cloud-init');
      const userData = await readText(o.cloudInit, '--cloud-init');
      const networkConfig = await readText(o.cloudInitNetwork, '--cloud-init-network');
      const metaData = await readText(o.cloudInitMeta, '--cloud-init-meta');
      const guest: 'probe' | 'bootblock' | 'custom' = o.guest ?? 'custom';
      const body = {
        name: vmName,
        memoryMiB: o.memory,
        cpus: o.cpus,
        cpu: o.cpu,
        ...(o.path ? { path: abs(o.path, '--path') } : {}),
        disks: [...(o.disk ?? []), ...(o.attach ?? []).map((f) => ({ attach: abs(f, '--attach') }))],
        guest,
        ...(o.kernel ? { kernel: abs(o.kernel, '--kernel') } : {}),
        ...(o.initrd ? { initrd: abs(o.initrd, '--initrd') } : {}),
        ...(o.append !== undefined ? { append: o.append } : {}),
        ...(o.image ? { image: abs(o.image, '--image') } : {}),
        ...(o.diskSize !== undefined ? { diskSizeBytes: o.diskSize } : {}),
        ...(o.diskFormat ? { diskFormat: o.diskFormat } : {}),
        cdroms: (o.cdrom ?? []).map((f) => path.resolve(f)),
        ...(o.firmware ? { firmware: o.firmware } : {}),
        ...(o.machine ? { machine: o.machine } : {}),
        ...(userData !== undefined
          ? {
              cloudInit: {
                userData,
                ...(networkConfig !== undefined ? { networkConfig } : {}),
                ...(metaData !== undefined ? { metaData } : {}),
              },
            }
          : {}),
        ...(o.boot ? { boot: split([o.boot]) } : {}),
        ...(o.display ? { display: o.display } : {}),
        switches: o.switch ?? [],
        ha: o.ha,
        smartPaging: o.smartPaging,
        start: o.start,
        ...(o.priority || pref || anti
          ? { cluster: { priority: o.priority ?? 'normal', preferredOwners: pref ?? [], antiAffinity: anti ?? [] } }
          : {}),
        ...(o.guest === 'probe'
          ? {
              probe: {
                ...(o.probeDirty ? { dirty: o.probeDirty } : {}),
                ...(o.probeNoWriter ? { noWriter: true } : {}),
              },
            }
          : {}),
      };
      await withHosts(g, async (c, actions) => {
        if (o.cpu === 'compat') body.cpu = await compatModel(c);
        // Copying a large image takes as long as it takes; the agent rolls back if we give up.
        const timeoutMs = o.image ? 3600_000 : 180_000;
        const v = await c.host(o.host).call(actions.vmCreate, { body }, { timeoutMs });
        if (o.json) printJson(v);
        else printVm(v);
      });
    });

  vm.command('import')
    .description(
      'register a libvirt domain (virsh dumpxml) as a VM: its disks in place (in pools) or copied with --copy; ' +
        'prints what it did not carry over',
    )
    .argument('<domain-xml>', 'the domain XML file')
    .requiredOption('--host <host>', 'host to register it on (its disks must be in pools there)')
    .option('--name <name>', "the VM's name (default: the domain's)", name('--name'))
    .option('--path <dir>', "the VM's folder (default: the host's local pool)")
    .option('--copy', 'copy the disks into the VM folder as qcow2 instead of using them in place', false)
    .option('--json', 'print {"vm": VM, "notes": [...]} as JSON')
    .action(async (file, o, cmd) => {
      const g = (cmd as Cmd).optsWithGlobals();
      const { MAX_DOMAIN_XML_BYTES, parseLibvirtDomain } = await import('../../vm/import-libvirt.js');
      const st = await fsp.stat(file).catch((err: unknown) => {
        throw new InvalidInputError(`Cannot read ${file}: ${messageOf(err)}; give a domain XML file`);
      });
      if (st.size > MAX_DOMAIN_XML_BYTES)
        throw new InvalidInputError(`Cannot import ${file}: it is ${st.size} bytes, not a domain XML`);
      const plan = parseLibvirtDomain(await fsp.readFile(file, 'utf8'));
      await withHosts(g, async (c, actions) => {
        const body = {
          plan,
          copy: o.copy,
          ...(o.name ? { name: o.name } : {}),
          ...(o.path ? { path: path.resolve(o.path) } : {}),
        };
        const r = await c.host(o.host).call(actions.vmImport, { body }, { timeoutMs: o.copy ? 3600_000 : 180_000 });
        if (o.json) {
          printJson(r);
          return;
        }
        printVm(r.vm);
        if (r.notes.length) {
          process.stdout.write(`\nnot carried over from domain '${plan.name}':\n`);
          for (const n of r.notes) process.stdout.write(`  - ${n}\n`);
        }
      });
    });

  vm.command('list')
    .description('VMs on every host (or one)')
    .option('--host <host>', 'only this host')
    .option('--json', 'JSON array')
    .action(async (o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        let vms: VmView[];
        let unreachable: string[] = [];
        if (o.host) vms = await c.host(o.host).call(actions.vmList, {});
        else ({ vms, unreachable } = await c.allVms());
        if (o.json) {
          printJson(vms);
          return;
        }
        printTable(
          ['NAME', 'HOST', 'STATE', 'MEMORY', 'CPUS', 'GUEST', 'CONFIG'],
          vms.map((v) => [v.name, v.host, v.state, `${v.memoryMiB}M`, v.cpus, v.guest, v.configPath]),
        );
        for (const h of unreachable) process.stderr.write(`warning: host ${h} did not answer\n`);
      });
    });

  vm.command('show')
    .description('one VM')
    .argument('<name>')
    .option('--json', 'JSON')
    .action(async (vmName, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c) => {
        const { vm: v } = await c.locate(vmName);
        if (o.json) printJson(v);
        else printVm(v);
      });
    });

  const simple = (verb: 'start' | 'pause' | 'resume', desc: string): void => {
    vm.command(verb)
      .description(desc)
      .argument('<name>')
      .option('--json', 'print the VM as JSON')
      .action(async (vmName, o, cmd) => {
        await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
          const { client } = await c.locate(vmName);
          const a = verb === 'start' ? actions.vmStart : verb === 'pause' ? actions.vmPause : actions.vmResume;
          const v = await client.call(a, { params: { name: vmName } }, { timeoutMs: 120_000 });
          if (o.json) printJson(v);
          else process.stdout.write(`${v.name}: ${v.state} on ${v.host}\n`);
        });
      });
  };
  simple('start', 'start a stopped VM');
  simple('pause', "pause a VM's vCPUs");
  simple('resume', "resume a paused VM's vCPUs");

  vm.command('set')
    .description(
      "change a VM's settings: --cpu on a stopped VM (processor compatibility on with compat or a model, " +
        'off with host); --failback on a clustered VM',
    )
    .argument('<name>')
    .option(
      '--cpu <model>',
      "compat (the newest model every host supports), host (the host's CPU; KVM only) or a QEMU model name",
    )
    .option('--failback <when>', `clustered VM: ${FAILBACK_HELP}`, failbackFlag)
    .option(
      '--smart-paging <on|off>',
      'back its RAM with a paging file where a host lacks the memory',
      onOff('--smart-paging'),
    )
    .option('--json', 'print the VM as JSON')
    .action(async (vmName, o, cmd) => {
      if (o.cpu === undefined && o.failback === undefined && o.smartPaging === undefined)
        throw new InvalidInputError(
          `Cannot change VM '${vmName}': nothing to change; give --cpu, --failback or --smart-paging`,
        );
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const { client, vm: cur } = await c.locate(vmName);
        if (o.failback !== undefined && !cur.ha)
          throw new InvalidInputError(
            `Cannot set the fail-back of VM '${vmName}': it is not clustered; ` +
              `make it clustered with 'ferry cluster add-vm ${vmName} --failback ${o.failback}'`,
          );
        let v = cur;
        if (o.cpu !== undefined || o.smartPaging !== undefined) {
          const cpu = o.cpu === 'compat' ? await compatModel(c) : o.cpu;
          const body = {
            ...(cpu !== undefined ? { cpu } : {}),
            ...(o.smartPaging !== undefined ? { smartPaging: o.smartPaging } : {}),
          };
          v = await client.call(actions.vmSet, { params: { name: vmName }, body }, { timeoutMs: 60_000 });
        }
        if (o.failback !== undefined)
          v = await client.call(
            actions.clusterAddVm,
            { body: { vm: vmName, failback: o.failback } },
            { timeoutMs: 30_000 },
          );
        if (o.json) printJson(v);
        else
          process.stdout.write(
            `${v.name}: ` +
              [
                ...(o.cpu !== undefined ? [`CPU model ${v.cpuModel}`] : []),
                ...(o.failback !== undefined ? [`fail-back ${o.failback}`] : []),
                ...(o.smartPaging !== undefined ? [`Smart Paging ${v.smartPaging ? 'allowed' : 'not allowed'}`] : []),
              ].join(', ') +
              '\n',
          );
      });
    });

  vm.command('stop')
    .description('shut a VM down (ACPI; forced after --timeout), or power it off with --force')
    .argument('<name>')
    .option('--force', 'power off at once', false)
    .option('--timeout <seconds>', 'how long the guest gets to shut down', positiveInt('--timeout', 600), 30)
    .option('--json', 'print the VM as JSON')
    .action(async (vmName, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const { client } = await c.locate(vmName);
        const v = await client.call(
          actions.vmStop,
          { params: { name: vmName }, body: { force: o.force, timeoutMs: o.timeout * 1000 } },
          { timeoutMs: o.timeout * 1000 + 60_000 },
        );
        if (o.json) printJson(v);
        else process.stdout.write(`${v.name}: ${v.state}\n`);
      });
    });

  vm.command('rm')
    .description('remove a stopped VM and the disks it made (attached and imported images stay)')
    .argument('<name>')
    .option('--keep-disks', 'keep the disk images it made too', false)
    .option('--delete-disks', 'delete the images it did not make too (attached, imported in place)', false)
    .option('--json', 'print {"removed": NAME}')
    .action(async (vmName, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        if (o.keepDisks && o.deleteDisks)
          throw new InvalidInputError('Cannot use --keep-disks with --delete-disks: choose one');
        const { client } = await c.locate(vmName);
        await client.call(actions.vmRemove, {
          params: { name: vmName },
          query: { deleteDisks: o.keepDisks ? 'false' : 'true', deleteExternal: o.deleteDisks ? 'true' : 'false' },
        });
        if (o.json) printJson({ removed: vmName });
        else process.stdout.write(`${vmName}: removed\n`);
      });
    });

  vm.command('console')
    .description(
      "the guest's serial output on its current host; --interactive attaches read-write " +
        '(detach with Ctrl-]; it follows the VM when it moves)',
    )
    .argument('<name>')
    .option('--follow', 'keep printing until interrupted', false)
    .option('--interactive', 'read-write: what you type goes to the guest; Ctrl-] detaches', false)
    .option('--tail <bytes>', 'show at most the last BYTES of the log', positiveInt('--tail', 64 * 1024 * 1024), 65536)
    .action(async (vmName, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c) => {
        if (o.interactive) {
          const { interactiveConsole } = await import('../serial-console.js');
          const ac = new AbortController();
          process.once('SIGTERM', () => ac.abort());
          const why = await interactiveConsole(c, vmName, {
            input: process.stdin,
            output: process.stdout,
            notices: process.stderr,
            signal: ac.signal,
          });
          process.stderr.write(`\r\n[${why}]\r\n`);
          return;
        }
        const { client } = await c.locate(vmName);
        const url = `/v1/vms/${encodeURIComponent(vmName)}/console?tail=${o.tail}&follow=${o.follow}`;
        if (!o.follow) {
          process.stdout.write(String(await client.request('GET', url, undefined)));
          return;
        }
        const ac = new AbortController();
        process.once('SIGINT', () => ac.abort());
        process.once('SIGTERM', () => ac.abort());
        await client.stream(url, (s) => process.stdout.write(s), { signal: ac.signal });
      });
    });

  vm.command('screenshot')
    .description("save the VM's screen as a PNG image")
    .argument('<name>')
    .requiredOption('--out <file>', 'the PNG file to write')
    .action(async (vmName, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c) => {
        const { client } = await c.locate(vmName);
        const png = await client.bytes(`/v1/vms/${encodeURIComponent(vmName)}/screenshot`, { timeoutMs: 30_000 });
        await fsp.writeFile(o.out, png);
        process.stdout.write(`${vmName}: screen saved to ${o.out} (${png.length} bytes)\n`);
      });
    });
}
