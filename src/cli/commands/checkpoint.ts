// `ferry checkpoint ...`: a VM's checkpoints (disk and memory state at one instant) on its host.
import type { Command } from '@commander-js/extra-typings';
import type { CheckpointList } from '../../api/schemas.js';
import type { GlobalOpts } from '../context.js';
import { withHosts } from '../hosts.js';
import { bytes, printJson, printTable } from '../output.js';

type Cmd = { optsWithGlobals(): GlobalOpts };

/** Taking or applying a memory checkpoint writes or reads the VM's whole memory. */
const CALL_TIMEOUT_MS = 15 * 60_000;

function printTree(l: CheckpointList): void {
  if (l.checkpoints.length === 0) {
    process.stdout.write(`${l.vm}: no checkpoints\n`);
    return;
  }
  printTable(
    ['NAME', 'ID', 'PARENT', 'CREATED', 'MEMORY', 'SIZE', 'FILES'],
    l.checkpoints.map((c) => [
      `${'  '.repeat(c.depth)}${c.name}${c.current ? ' *' : ''}`,
      c.id.slice(0, 8),
      c.parentName ?? '-',
      c.created.replace(/\.\d+Z$/, 'Z'),
      c.memory ? 'yes' : 'no',
      bytes(c.sizeBytes),
      [...c.files, ...c.baseDisks].join(', '),
    ]),
  );
  process.stdout.write(`* the present state derives from it; files are in ${l.folder}\n`);
}

export function registerCheckpoint(program: Command): void {
  const ck = program.command('checkpoint').description("a VM's checkpoints: its disks (and memory) at one instant");

  ck.command('new')
    .description('take a checkpoint: a running VM keeps disks and memory, a stopped one its disks')
    .argument('<vm>')
    .argument('<name>', 'checkpoint name')
    .option('--json', 'print the checkpoint as JSON')
    .action(async (vmName, ckName, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const { client } = await c.locate(vmName);
        const v = await client.call(
          actions.checkpointNew,
          { params: { name: vmName }, body: { name: ckName } },
          { timeoutMs: CALL_TIMEOUT_MS },
        );
        if (o.json) printJson(v);
        else
          process.stdout.write(
            `${vmName}: checkpoint ${v.name} (${v.memory ? 'disks and memory' : 'disks'}) in ${v.tookMs} ms` +
              (v.pauseMs !== null ? `, guest paused ${v.pauseMs} ms` : '') +
              '\n',
          );
      });
    });

  ck.command('list')
    .description("a VM's checkpoints as a tree")
    .argument('<vm>')
    .option('--json', 'JSON')
    .action(async (vmName, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const { client } = await c.locate(vmName);
        const l = await client.call(actions.checkpointList, { params: { name: vmName } });
        if (o.json) printJson(l);
        else printTree(l);
      });
    });

  ck.command('apply')
    .description('return the VM to a checkpoint; the present state is kept as a branch checkpoint')
    .argument('<vm>')
    .argument('<name>', 'checkpoint name')
    .option('--discard', 'throw the present state away instead of keeping it', false)
    .option('--json', 'print the result as JSON')
    .action(async (vmName, ckName, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const { client } = await c.locate(vmName);
        const r = await client.call(
          actions.checkpointApply,
          { params: { name: vmName, checkpoint: ckName }, body: { discard: o.discard } },
          { timeoutMs: CALL_TIMEOUT_MS },
        );
        if (o.json) printJson(r);
        else
          process.stdout.write(
            `${vmName}: back at checkpoint ${r.checkpoint}, ${r.vm.state}` +
              (r.branch ? `; the state it left is checkpoint ${r.branch}` : '') +
              '\n',
          );
      });
    });

  ck.command('rm')
    .description('remove a checkpoint, merging its data into what is built on it (live if the VM runs)')
    .argument('<vm>')
    .argument('<name>', 'checkpoint name')
    .option('--json', 'print {"removed": NAME}')
    .action(async (vmName, ckName, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const { client } = await c.locate(vmName);
        await client.call(
          actions.checkpointRemove,
          { params: { name: vmName, checkpoint: ckName } },
          { timeoutMs: CALL_TIMEOUT_MS },
        );
        if (o.json) printJson({ removed: ckName });
        else process.stdout.write(`${vmName}: checkpoint ${ckName} removed\n`);
      });
    });
}
