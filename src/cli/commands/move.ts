// `ferry compare-vm`, `ferry move-vm`, `ferry migration ...`.
import { DEFAULTS, PRIORITIES, RESUMABLE_MODES, type Priority, type ResumableMode } from '../../api/defaults.js';
import path from 'node:path';
import { Option, type Command, type CommandUnknownOpts } from '@commander-js/extra-typings';
import { InvalidArgumentError } from '@commander-js/extra-typings';
import { FerryError, InvalidInputError, NotFoundError } from '../../errors.js';
import type { AgentClient } from '../../api/client.js';
import type { Incompatibility, MigrationRecord, MoveOptions, Prediction } from '../../migration/schemas.js';
import type { Clients, GlobalOpts } from '../context.js';
import { loadActions, withHosts } from '../hosts.js';
import { printJson, printTable, bytes } from '../output.js';
import { collect, positiveInt } from '../parse.js';
import { describe } from '../render/describe.js';
import { stepLines } from '../render/steps.js';
import { describeOutcome } from '../../migration/prediction-outcome.js';
import { progressRenderer, PROGRESS_MODES, type ProgressMode } from '../render/index.js';
import type { FollowOptions, FollowOutcome, MigrationWatch } from '../follow.js';
import { Interrupts } from '../interrupt.js';
import { EXIT } from '../exit.js';

type Cmd = { optsWithGlobals(): GlobalOpts };

interface MoveFlags {
  includeStorage?: boolean;
  storagePath?: string;
  vhd?: string[];
  configPath?: string;
  checkpointPath?: string;
  pagingPath?: string;
  retainSource?: boolean;
  resumable?: ResumableMode;
}

const resumable = (s: string): ResumableMode => {
  const m = RESUMABLE_MODES.find((x) => x === s);
  if (m) return m;
  throw new InvalidArgumentError(`Cannot use --resumable '${s}': write ${RESUMABLE_MODES.join(', ')}`);
};

function addMoveOptions<C extends CommandUnknownOpts>(c: C): C {
  return c
    .option('--include-storage', 'copy the disks too (shared nothing)')
    .option('--storage-path <dir>', 'put every file of the VM in this folder on the destination')
    .option('--vhd <src=dst>', 'put one disk at a destination path (repeatable)', collect)
    .option('--config-path <dir>', "destination folder for the VM's config")
    .option('--checkpoint-path <dir>', 'destination folder for checkpoints')
    .option('--paging-path <dir>', 'destination folder for paging files')
    .option('--retain-source', 'keep the source copies of the disks')
    .addOption(
      new Option(
        '--resumable <mode>',
        "a running VM's disk copy that can resume after a cut: auto (disks of 1 GiB or more), always or never",
      ).argParser(resumable),
    ) as C;
}

function moveOptions(f: MoveFlags): MoveOptions {
  const vhd: Record<string, string> = {};
  for (const v of f.vhd ?? []) {
    const i = v.indexOf('=');
    if (i <= 0 || i === v.length - 1)
      throw new InvalidInputError(`Cannot use --vhd '${v}': write SRC=DST with two paths`);
    vhd[path.resolve(v.slice(0, i))] = path.resolve(v.slice(i + 1));
  }
  const anyStorage = f.storagePath || f.vhd?.length || f.configPath || f.checkpointPath || f.pagingPath;
  if (anyStorage && !f.includeStorage)
    throw new InvalidInputError(
      'Cannot use --storage-path, --vhd or --*-path without --include-storage: they say where copied files go; ' +
        'add --include-storage',
    );
  if (f.resumable && !f.includeStorage)
    throw new InvalidInputError(
      'Cannot use --resumable without --include-storage: it says how copied disks go; add --include-storage',
    );
  return {
    includeStorage: Boolean(f.includeStorage),
    ...(f.storagePath ? { storagePath: path.resolve(f.storagePath) } : {}),
    ...(f.vhd?.length ? { vhd } : {}),
    ...(f.configPath ? { configPath: path.resolve(f.configPath) } : {}),
    ...(f.checkpointPath ? { checkpointPath: path.resolve(f.checkpointPath) } : {}),
    ...(f.pagingPath ? { pagingPath: path.resolve(f.pagingPath) } : {}),
    retainSource: Boolean(f.retainSource),
    ...(f.resumable ? { resumable: f.resumable } : {}),
  };
}

function destination(c: Clients, name: string): { name: string; endpoint: string } {
  const h = c.ctx.hosts.find((x) => x.name === name);
  if (!h)
    throw new NotFoundError(
      'E_HOST_NOT_FOUND',
      `Cannot find host '${name}': known hosts are ${c.ctx.hosts.map((x) => x.name).join(', ')}`,
      { host: name },
    );
  return h;
}

interface PolicyFlags {
  maxDowntime?: number;
  finishWithin?: number;
  bandwidth?: number;
  allowPostcopy?: boolean;
}

function policyFlags(o: PolicyFlags) {
  return {
    ...(o.maxDowntime ? { maxDowntimeMs: o.maxDowntime } : {}),
    ...(o.finishWithin ? { finishWithinS: o.finishWithin } : {}),
    ...(o.bandwidth ? { bandwidthMiBps: o.bandwidth } : {}),
    allowPostcopy: Boolean(o.allowPostcopy),
  };
}

function printPrediction(p: Prediction): void {
  const link =
    p.linkSource === 'history'
      ? 'from recent moves there'
      : p.linkSource === 'bandwidth'
        ? 'the --bandwidth cap'
        : 'assumed: no move there in the last day';
  const rows: Array<[string, string]> = [
    ['prediction', p.summary],
    ['total', `~${(p.totalMs / 1000).toFixed(1)} s`],
    [
      'downtime',
      p.downtimeMs === null
        ? '- (given up before the switch-over)'
        : `~${p.downtimeMs} ms` +
          (p.switchMs ? ` (~${p.switchMs} ms of it the switch-over's own, from recent moves)` : ''),
    ],
    ['converges', `${p.converges ? 'yes' : 'no'} at --max-downtime ${p.maxDowntimeMs} ms (step: ${p.step})`],
    [
      'dirty rate',
      `${p.dirtyRateMiBps} MiB/s (QEMU ${p.dirtyMode}, ${p.dirtySampleMs} ms)` +
        (p.workingSetMiB === undefined ? '' : `, rewriting the same ~${p.workingSetMiB} MiB`),
    ],
    ['link', `${p.linkMiBps} MiB/s of data` + (p.zeroMiBps === undefined ? '' : `, ${zeroPages(p)}`) + ` (${link})`],
    [
      'first pass',
      p.wireShare === undefined
        ? `${p.memoryMiB} MiB (every page: its QEMU's memory map gave no figure for the guest's RAM)`
        : p.wireShareFrom === 'sampled'
          ? `~${Math.round(p.memoryMiB * p.wireShare)} of ${p.memoryMiB} MiB on the wire ` +
            '(pages of its RAM sampled for data; QEMU sends a zero page as a few bytes)'
          : `at most ${Math.round(p.memoryMiB * p.wireShare)} of ${p.memoryMiB} MiB on the wire ` +
            '(the pages its QEMU holds; the rest are zero pages)',
    ],
  ];
  const w = Math.max(...rows.map((x) => x[0].length));
  for (const [k, v] of rows) process.stdout.write(`  ${k.padEnd(w)}  ${v}\n`);
}

/** The zero pages' rate, and whether recent moves told it apart from the data's. */
function zeroPages(p: Prediction): string {
  return p.zeroSource === 'assumed'
    ? `${p.zeroMiBps} MiB/s of zero pages (assumed: recent moves were too alike to tell it apart)`
    : `${p.zeroMiBps} MiB/s of zero pages`;
}

function printReport(incs: Incompatibility[]): void {
  for (const i of incs) process.stderr.write(`  ${i.code}  ${i.field}: ${i.message}\n`);
}

/** What a downtime was spent on, when the record knows. */
function paused(b: number | null | undefined): string {
  return b === null || b === undefined ? '' : ` (${bytes(b)} sent with the guest paused)`;
}

function printRecord(r: MigrationRecord): void {
  const rows: Array<[string, string]> = [
    ['migration', r.id],
    ['vm', r.vm],
    ['kind', r.kind],
    ['from → to', `${r.source} → ${r.destination}`],
    ['state', r.state],
    ['progress', `${Math.floor(r.progress * 100)}%`],
    ['downtime', r.downtimeMs === null ? '-' : `${r.downtimeMs} ms${paused(r.pausedBytes)}`],
    ['total', r.totalMs === null ? '-' : `${(r.totalMs / 1000).toFixed(1)} s`],
    ['transferred', `${bytes(r.bytesTransferred)}${r.passes ? ` in ${r.passes} pass(es)` : ''}`],
  ];
  // How the disks were copied, and for a retry that resumed a cut copy what it sent again.
  const resumed = r.disks.filter((d) => d.resumed);
  const method = r.diskCopy === 'resumable' ? 'resumable (backup passes)' : r.diskCopy;
  if (resumed.length) {
    const sent = resumed.reduce((a, d) => a + (d.resumed?.resentBytes ?? 0), 0);
    const of = resumed.reduce((a, d) => a + (d.resumed?.diskBytes ?? 0), 0);
    rows.push(['disk copy', `resumed, ${bytes(sent)} of ${bytes(of)} re-sent (${resumed.length} disk(s))`]);
  } else if (method) rows.push(['disk copy', method]);
  if (r.error) rows.push(['error', `${r.error.code}: ${r.error.message}`]);
  // The prediction made before the move (compare-vm --predict), and how the move bore it out.
  if (r.prediction) {
    rows.push(['predicted', r.prediction.summary]);
    const against = describeOutcome(r.prediction, r);
    if (against) rows.push(['outcome', against]);
  }
  const w = Math.max(...rows.map((x) => x[0].length));
  for (const [k, v] of rows) process.stdout.write(`${k.padEnd(w)}  ${v}\n`);
}

/** Finds which host holds migration ID (the VM's source at the time). */
async function locateMigration(c: Clients, id: string): Promise<{ client: AgentClient; record: MigrationRecord }> {
  const actions = await loadActions();
  for (const client of c.all()) {
    try {
      return { client, record: await client.call(actions.migrationShow, { params: { id } }, { timeoutMs: 10_000 }) };
    } catch (err) {
      if ((err as FerryError).code === 'E_INVALID_INPUT') throw err;
    }
  }
  throw new NotFoundError(
    'E_MIGRATION_NOT_FOUND',
    `Cannot find migration ${id} on any host; 'ferry migration list --all' shows them`,
    { id },
  );
}

/**
 * Follows a migration to its end through its host's event stream (subscribed by `watch`
 * before the move started), rendering progress on stderr; then prints the record (or, after
 * Ctrl-C detached, its id) and sets the exit code.
 */
async function followAndReport(
  w: Watching,
  id: string,
  o: { json: boolean; progress: ProgressMode; initial?: MigrationRecord },
  firstInterrupt: FollowOptions['firstInterrupt'],
): Promise<MigrationRecord> {
  w.following();
  const renderer = await progressRenderer(o.progress);
  let out: FollowOutcome;
  try {
    out = await w.watch.follow(id, {
      ...(o.initial ? { initial: o.initial } : {}),
      renderer,
      interrupts: w.interrupts,
      firstInterrupt,
    });
  } finally {
    renderer.stop();
  }
  const r = out.record;
  if (out.kind === 'detached') {
    const cancel = out.cancelRequested ? '' : `, cancel it with 'ferry migration cancel ${r.id}'`;
    const state = `${r.state}${out.cancelRequested ? ', cancel requested' : ''}`;
    process.stderr.write(
      `detached: migration ${r.id} of VM '${r.vm}' goes on (${state}); ` +
        `follow it with 'ferry migration wait ${r.id}'${cancel}\n`,
    );
    if (o.json) printJson(r);
    else process.stdout.write(`${r.id}\n`);
    // As before events: a detached wait did not see the move end, so it does not exit 0.
    process.exitCode = EXIT.cancelled;
    return r;
  }
  if (o.json) printJson(r);
  else printRecord(r);
  exitFor(r);
  return r;
}

interface Watching {
  watch: MigrationWatch;
  interrupts: Interrupts;
  /** Called when following starts: from then on Ctrl-C is the follower's. */
  following(): void;
}

/** A stream opened while the VM was being located, on the host it was last seen on. */
interface EarlyWatch {
  client: AgentClient;
  watch: Promise<MigrationWatch>;
  /** Gives up the opening (a host that is not the VM's, or does not answer). */
  abort: AbortController;
}

/**
 * Opens the host's event stream before a move starts (so no event of it is missed), and
 * counts Ctrl-C from then on: a press while the move is still being created is acted on as
 * soon as it exists. `early` is used when it is `client`'s host, given up otherwise.
 */
async function watching(client: AgentClient, fn: (w: Watching) => Promise<void>, early?: EarlyWatch): Promise<void> {
  const interrupts = new Interrupts();
  const stopEarly = interrupts.listen(() => {
    process.stderr.write('Ctrl-C: acted on as soon as the move exists (Ctrl-C again to stop waiting for it)\n');
  });
  try {
    const watch = await adoptOrOpen(client, early);
    try {
      await fn({ watch, interrupts, following: stopEarly });
    } finally {
      watch.close();
    }
  } finally {
    stopEarly();
    interrupts.dispose();
  }
}

/**
 * The early stream when it is `client`'s and opened; else a new one (a failed early one is
 * tried again). Another host's early stream is given up without waiting for it to open.
 */
async function adoptOrOpen(client: AgentClient, early?: EarlyWatch): Promise<MigrationWatch> {
  if (early?.client === client) {
    const pre = await early.watch.catch(() => null);
    if (pre) return pre;
  } else giveUp(early);
  const { MigrationWatch } = await import('../follow.js');
  return MigrationWatch.open(client);
}

function giveUp(early?: EarlyWatch): void {
  early?.abort.abort();
  early?.watch.then(
    (w) => w.close(),
    () => undefined,
  );
}

/**
 * Locates VM and, when the command waits for the move, opens the event stream of the host
 * it was last seen on at the same time: still subscribed before the move is asked for, one
 * round trip sooner. `run` gets the VM's client and, with wait, the watch.
 */
async function locateWatching(
  c: Clients,
  vmName: string,
  wait: boolean,
  run: (client: AgentClient, w: Watching | null) => Promise<void>,
): Promise<void> {
  const hinted = wait ? c.hinted(vmName) : null;
  let early: EarlyWatch | undefined;
  if (hinted) {
    const abort = new AbortController();
    const watch = import('../follow.js').then(({ MigrationWatch }) =>
      MigrationWatch.open(hinted, { signal: abort.signal }),
    );
    watch.catch(() => undefined); // awaited (or given up) below: never an unhandled rejection
    early = { client: hinted, watch, abort };
  }
  let client: AgentClient;
  try {
    ({ client } = await c.locate(vmName));
  } catch (err) {
    giveUp(early);
    throw err;
  }
  if (!wait) return run(client, null);
  return watching(client, (w) => run(client, w), early);
}

const progressOption = (): Option<'--progress <mode>', undefined, 'auto', ProgressMode> =>
  new Option('--progress <mode>', 'progress on stderr: auto (a bar on a terminal, else lines), bar, lines, json, none')
    .choices(PROGRESS_MODES)
    .default('auto' as const);

const INTERRUPT_HELP = `
Ctrl-C while it waits: the first press cancels the move if its phase still allows it (before
the switch-over; the VM stays where it was), waits for the rollback and exits 5; past that
point it says so and keeps following. The next press stops following: the move goes on, its
id is printed and the exit code is 5 ('ferry migration wait ID' follows it again).`;

const WAIT_INTERRUPT_HELP = `
Ctrl-C stops following: the migration goes on, the exit code is 5 ('ferry migration cancel ID'
cancels it).`;

function exitFor(r: MigrationRecord): void {
  if (r.state === 'failed') process.exitCode = r.error?.code === 'E_INCOMPATIBLE' ? EXIT.incompatible : EXIT.failed;
  if (r.state === 'cancelled') process.exitCode = EXIT.cancelled;
}

const priority = (s: string): Priority => {
  const p = PRIORITIES.find((x) => x === s);
  if (p) return p;
  throw new InvalidArgumentError(`Cannot use --priority '${s}': write ${PRIORITIES.join(', ')}`);
};

export function registerMove(program: Command): void {
  addMoveOptions(
    program
      .command('compare-vm')
      .description('check whether a VM can move to a host (exit 0 compatible, 3 not)')
      .argument('<name>')
      .requiredOption('--to <host>', 'destination host')
      .option('--predict', 'measure the running guest (~1 s) and predict time, downtime and convergence')
      .option(
        '--max-downtime <ms>',
        `with --predict: the move's longest acceptable pause (default ${DEFAULTS.maxDowntimeMs})`,
        positiveInt('--max-downtime', 600_000),
      )
      .option(
        '--finish-within <seconds>',
        "with --predict: the move's time budget",
        positiveInt('--finish-within', 86_400),
      )
      .option('--bandwidth <mibps>', 'with --predict: the rate cap of the move', positiveInt('--bandwidth', 1_000_000))
      .option('--allow-postcopy', 'with --predict: the move may switch to post-copy')
      .option('--json', 'JSON report'),
  ).action(async (vmName, o, cmd) => {
    if (!o.predict && (o.maxDowntime || o.finishWithin || o.bandwidth || o.allowPostcopy))
      throw new InvalidInputError(
        'Cannot use --max-downtime, --finish-within, --bandwidth or --allow-postcopy with compare-vm without ' +
          '--predict: they describe the move to predict; add --predict',
      );
    await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
      const to = destination(c, o.to);
      const { client } = await c.locate(vmName);
      const rep = await client.call(
        actions.compare,
        {
          body: {
            vm: vmName,
            to,
            options: moveOptions(o as MoveFlags),
            ...(o.predict ? { predict: true, policy: policyFlags(o) } : {}),
          },
        },
        { timeoutMs: 120_000 },
      );
      if (o.json) printJson(rep);
      else if (rep.compatible) process.stdout.write(`VM ${vmName} can move to ${o.to}\n`);
      else {
        process.stdout.write(`VM ${vmName} cannot move to ${o.to}:\n`);
        for (const i of rep.incompatibilities) process.stdout.write(`  ${i.code}  ${i.field}: ${i.message}\n`);
      }
      if (!o.json)
        for (const w of rep.warnings ?? []) process.stdout.write(`  warning ${w.code}  ${w.field}: ${w.message}\n`);
      if (rep.prediction && !o.json) printPrediction(rep.prediction);
      if (!rep.compatible) process.exitCode = EXIT.incompatible;
    });
  });

  addMoveOptions(
    program
      .command('move-vm')
      .description('move a running (or stopped) VM to another host')
      .argument('<name>')
      .requiredOption('--to <host>', 'destination host'),
  )
    .option(
      '--max-downtime <ms>',
      `longest acceptable pause at switch-over (default ${DEFAULTS.maxDowntimeMs})`,
      positiveInt('--max-downtime', 600_000),
    )
    .option(
      '--finish-within <seconds>',
      'give up (or go post-copy) after this long (default: 60 s + 30 s per GiB)',
      positiveInt('--finish-within', 86_400),
    )
    .addOption(new Option('--priority <p>', 'queue priority: high, normal or low').argParser(priority))
    .option('--bandwidth <mibps>', 'cap the transfer rate (MiB/s)', positiveInt('--bandwidth', 1_000_000))
    .option(
      '--allow-postcopy',
      'when --finish-within is spent, run the guest on the destination and pull its remaining pages ' +
        '(post-copy), only over a healthy link (no 3 s without data in the last 10 s); a failure after the ' +
        'switch loses the guest on both hosts',
    )
    .option('--no-wait', 'return the migration id at once')
    .option('--json', 'print the migration record as JSON')
    .addOption(progressOption())
    .addHelpText('after', INTERRUPT_HELP)
    .action(async (vmName, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const to = destination(c, o.to);
        await locateWatching(c, vmName, o.wait, async (client, w) => {
          let rec: MigrationRecord;
          try {
            rec = await client.call(
              actions.migrationCreate,
              {
                body: {
                  vm: vmName,
                  to,
                  options: moveOptions(o as MoveFlags),
                  policy: { ...policyFlags(o), ...(o.priority ? { priority: o.priority } : {}) },
                },
              },
              { timeoutMs: 180_000 },
            );
          } catch (err) {
            const fe = err as FerryError;
            if (fe.code === 'E_INCOMPATIBLE') {
              const incs = (fe.context.incompatibilities ?? []) as Incompatibility[];
              if (o.json) printJson({ compatible: false, incompatibilities: incs });
              process.stderr.write(`ferry: Cannot move VM '${vmName}' to '${o.to}': the pre-flight check failed:\n`);
              printReport(incs);
              process.exitCode = EXIT.incompatible;
              return;
            }
            throw err;
          }
          if (!w) {
            if (o.json) printJson(rec);
            else process.stdout.write(`${rec.id}\n`);
            return;
          }
          const end = await followAndReport(
            w,
            rec.id,
            { json: Boolean(o.json), progress: o.progress, initial: rec },
            'cancel',
          );
          if (end.state === 'completed') c.vmHosts.set(vmName, to.name);
        });
      });
    });

  program
    .command('move-storage')
    .description("move a VM's storage to new places on its host (running or stopped)")
    .argument('<name>')
    .option('--path <dir>', 'everything (disks, config, checkpoints, paging) to this folder')
    .option('--vhd <src=dst>', 'one disk to a new path (repeatable)', collect)
    .option('--config-path <dir>', "new folder for the VM's config")
    .option('--checkpoint-path <dir>', 'new folder for checkpoints')
    .option('--paging-path <dir>', 'new folder for paging files')
    .addOption(new Option('--priority <p>', 'queue priority: high, normal or low').argParser(priority))
    .option('--bandwidth <mibps>', 'cap the copy rate (MiB/s)', positiveInt('--bandwidth', 1_000_000))
    .addOption(
      new Option(
        '--resumable <mode>',
        "a running VM's disk copy that a retry resumes after a cut: auto (disks of 1 GiB or more), always or never",
      ).argParser(resumable),
    )
    .option('--no-wait', 'return the migration id at once')
    .option('--json', 'print the migration record as JSON')
    .addOption(progressOption())
    .addHelpText('after', INTERRUPT_HELP)
    .action(async (vmName, o, cmd) => {
      const mo = moveOptions({ includeStorage: true, ...(o.vhd ? { vhd: o.vhd } : {}) });
      if (!o.path && !o.vhd && !o.configPath && !o.checkpointPath && !o.pagingPath) {
        throw new InvalidInputError(
          `Cannot move the storage of VM '${vmName}': say where to; give --path DIR, --vhd SRC=DST, ` +
            'or --config-path/--checkpoint-path/--paging-path',
        );
      }
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        await locateWatching(c, vmName, o.wait, async (client, w) => {
          const rec = await client.call(
            actions.storageMove,
            {
              body: {
                vm: vmName,
                ...(o.path ? { path: path.resolve(o.path) } : {}),
                ...(mo.vhd ? { vhd: mo.vhd } : {}),
                ...(o.configPath ? { configPath: path.resolve(o.configPath) } : {}),
                ...(o.checkpointPath ? { checkpointPath: path.resolve(o.checkpointPath) } : {}),
                ...(o.pagingPath ? { pagingPath: path.resolve(o.pagingPath) } : {}),
                ...(o.priority ? { priority: o.priority } : {}),
                ...(o.bandwidth ? { bandwidthMiBps: o.bandwidth } : {}),
                ...(o.resumable ? { resumable: o.resumable } : {}),
              },
            },
            { timeoutMs: 120_000 },
          );
          if (!w) {
            if (o.json) printJson(rec);
            else process.stdout.write(`${rec.id}\n`);
            return;
          }
          await followAndReport(w, rec.id, { json: Boolean(o.json), progress: o.progress, initial: rec }, 'cancel');
        });
      });
    });

  const mig = program.command('migration').description('migration jobs');
  mig
    .command('list')
    .option('--all', 'include finished ones')
    .option('--json', 'JSON array')
    .description('active and queued migrations of every host')
    .action(async (o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const lists = await Promise.all(
          c
            .all()
            .map((cl) =>
              cl
                .call(actions.migrationList, { query: { all: o.all ? 'true' : 'false' } })
                .catch(() => [] as MigrationRecord[]),
            ),
        );
        const all = lists.flat().sort((a, b) => a.createdAt.localeCompare(b.createdAt));
        if (o.json) {
          printJson(all);
          return;
        }
        printTable(
          ['ID', 'VM', 'KIND', 'FROM', 'TO', 'STATE', 'POS', 'PROGRESS', 'DOWNTIME'],
          all.map((r) => [
            r.id,
            r.vm,
            r.kind,
            r.source,
            r.destination,
            r.state,
            r.queuePosition,
            `${Math.floor(r.progress * 100)}%`,
            r.downtimeMs === null ? '-' : `${r.downtimeMs} ms`,
          ]),
        );
      });
    });
  mig
    .command('show')
    .argument('<id>')
    .option('--json', 'JSON')
    .description('one migration')
    .action(async (id, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c) => {
        const { record } = await locateMigration(c, id);
        if (o.json) printJson(record);
        else {
          printRecord(record);
          process.stdout.write(`\n${describe(record)}\n`);
          for (const e of record.events) process.stdout.write(`  ${e.at}  ${e.message}\n`);
          const steps = stepLines(record.steps, record);
          if (steps.length) process.stdout.write(`\n${steps.join('\n')}\n`);
        }
      });
    });
  mig
    .command('wait')
    .argument('<id>')
    .option('--json', 'JSON')
    .addOption(progressOption())
    .addHelpText('after', WAIT_INTERRUPT_HELP)
    .description('follow a migration until it ends')
    .action(async (id, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c) => {
        const { client } = await locateMigration(c, id);
        // Subscribed first, then the record is read once: nothing between the two is missed.
        await watching(client, async (w) => {
          await followAndReport(w, id, { json: Boolean(o.json), progress: o.progress }, 'detach');
        });
      });
    });
  mig
    .command('cancel')
    .argument('<id>')
    .option('--json', 'JSON')
    .description('cancel a migration before its switch-over')
    .action(async (id, o, cmd) => {
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const { client } = await locateMigration(c, id);
        const r = await client.call(actions.migrationCancel, { params: { id } }, { timeoutMs: 120_000 });
        if (o.json) printJson(r);
        else process.stdout.write(`migration ${id}: ${r.state}\n`);
      });
    });
}
