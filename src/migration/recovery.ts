// Agent start on a source host: migrations its previous life left unfinished are finished
// or rolled back, so the VM runs on exactly one host and no copy job, NBD node or half-written
// file is left. The record says what was done.
import fsp from 'node:fs/promises';
import { messageOf } from '../errors.js';
import { AgentClient } from '../api/client.js';
import { peerActions } from '../api/peer-actions.js';
import type { MoveHost } from './host.js';
import type { QemuProcess } from '../qemu/process.js';
import { saveVm } from '../vm/folder.js';
import { sleep } from '../util/exec.js';
import { TERMINAL, type MigrationRecord } from './schemas.js';
import { delNode } from './block.js';

const ACTIVE = ['setup', 'active', 'pre-switchover', 'device', 'wait-unplug', 'cancelling'];

export async function recoverSource(e: MoveHost): Promise<void> {
  const open = e.store.listMigrations(1000).filter((r) => !TERMINAL.includes(r.state) && r.source === e.name);
  for (const r of open) {
    const log = (m: string): void => {
      r.events.push({ at: new Date().toISOString(), message: m });
    };
    log('the source agent restarted during this move: recovering');
    try {
      if (r.kind === 'storage') await recoverStorage(e, r, log);
      else await recoverMove(e, r, log);
    } catch (err) {
      r.state = 'failed';
      r.error = {
        code: 'E_RECOVERY',
        message: `Cannot recover the interrupted move of VM '${r.vm}': ${messageOf(err)}; check where it runs with 'ferry vm list'`,
      };
    }
    r.finishedAt = new Date().toISOString();
    r.totalMs = r.startedAt ? Date.parse(r.finishedAt) - Date.parse(r.startedAt) : 0;
    e.store.saveMigration(r);
    e.emit('migration', { vm: r.vm, migration: r });
  }
}

function rolledBack(r: MigrationRecord, why: string): void {
  r.state = 'failed';
  r.error = {
    code: 'E_AGENT_RESTARTED',
    message: `The move of VM '${r.vm}' to '${r.destination}' was interrupted by a restart of the agent on '${r.source}' and rolled back (${why}); the VM stays on ${r.source}; move it again`,
  };
}

async function recoverMove(e: MoveHost, r: MigrationRecord, log: (m: string) => void): Promise<void> {
  const dest = r.destinationEndpoint
    ? new AgentClient({
        endpoint: r.destinationEndpoint,
        host: r.destination,
        credentials: { ca: e.tls.ca, cert: e.tls.cert, key: e.tls.key },
      })
    : null;
  try {
    const status = async (): Promise<string> => {
      if (!dest) return 'unknown';
      for (let i = 0; i < 10; i++) {
        try {
          return (await dest.call(peerActions.status, { params: { id: r.id } }, { timeoutMs: 5000 })).state;
        } catch {
          await sleep(1000);
        }
      }
      return 'unreachable';
    };
    const abortDest = async (): Promise<void> => {
      await dest?.call(peerActions.abort, { params: { id: r.id } }, { timeoutMs: 30_000 }).catch(() => undefined);
    };
    const proc = e.vms.proc(r.vm);
    if (!proc) {
      // A stopped VM's move: did the destination register it?
      const there = dest ? await dest.call(peerActions.vms, {}, { timeoutMs: 10_000 }).catch(() => null) : null;
      const spec = e.vms.ids().some((v) => v.name === r.vm) ? await e.vms.spec(r.vm).catch(() => null) : null;
      if (there && spec && there.some((v) => v.id === spec.id)) {
        await e.vms.movedAway(r.vm, null);
        r.state = 'completed';
        r.progress = 1;
        log(
          `${r.destination} had registered the VM: the move is complete (source files kept; remove them once checked)`,
        );
        return;
      }
      await abortDest();
      rolledBack(r, 'the VM was not running');
      return;
    }
    const st = (await proc.qmp.execute('query-migrate', undefined, { timeoutMs: 10_000 })).status ?? 'none';
    if (st.startsWith('postcopy')) {
      r.state = 'failed';
      r.error = {
        code: 'E_RECOVERY',
        message: `VM '${r.vm}' was in post-copy when the agent restarted; it cannot be rolled back: check it on ${r.destination}`,
      };
      return;
    }
    if (st === 'completed') {
      const d = await status();
      let runsThere = d === 'running';
      if (d === 'prepared' && dest) {
        runsThere = await dest.call(peerActions.finish, { params: { id: r.id } }, { timeoutMs: 60_000 }).then(
          () => true,
          () => false,
        );
      }
      if (!runsThere && d === 'unreachable' && r.kind === 'shared-nothing') {
        r.state = 'failed';
        r.error = {
          code: 'E_RECOVERY',
          message: `VM '${r.vm}' finished copying to ${r.destination}, which does not answer: it stays paused on ${r.source} so it can never run twice; once ${r.destination} answers, run 'ferry vm resume ${r.vm}' only if it does not run there`,
        };
        return;
      }
      if (!runsThere) {
        // Shared storage: the image lock refuses the source while the destination holds it.
        try {
          await proc.qmp.execute('cont', undefined, { timeoutMs: 10_000 });
          await abortDest();
          rolledBack(r, 'the destination never ran it');
          return;
        } catch (err) {
          if (!/lock/i.test(messageOf(err))) throw err;
          runsThere = true;
        }
      }
      await e.vms.movedAway(r.vm, proc);
      r.state = 'completed';
      r.progress = 1;
      log(
        `${r.destination} runs the VM: the move is complete${r.kind === 'shared-nothing' ? ' (source files kept; remove them once checked)' : ''}`,
      );
      return;
    }
    if (ACTIVE.includes(st)) {
      if (st !== 'cancelling')
        await proc.qmp.execute('migrate_cancel', undefined, { timeoutMs: 10_000 }).catch(() => undefined);
      for (let i = 0; i < 100; i++) {
        const x = (await proc.qmp.execute('query-migrate', undefined, { timeoutMs: 5000 })).status;
        if (x !== 'cancelling' && !ACTIVE.includes(x ?? '')) break;
        await sleep(50);
      }
    }
    await dropBlockLeftovers(proc);
    const run = await proc.qmp.execute('query-status', undefined, { timeoutMs: 5000 });
    if (!run.running) await proc.qmp.execute('cont', undefined, { timeoutMs: 5000 });
    await abortDest();
    rolledBack(r, `the stream was ${st === 'none' ? 'not started' : st}`);
  } finally {
    dest?.close();
  }
}

/** Cancels leftover mirror jobs and deletes NBD client nodes of an interrupted move. */
async function dropBlockLeftovers(proc: QemuProcess): Promise<void> {
  const jobs = await proc.qmp.execute('query-jobs', undefined, { timeoutMs: 5000 }).catch(() => []);
  for (const j of jobs) {
    if (j.status !== 'concluded')
      await proc.qmp
        .execute('block-job-cancel', { device: j.id, force: true }, { timeoutMs: 5000 })
        .catch(() => undefined);
    for (let i = 0; i < 50; i++) {
      try {
        await proc.qmp.execute('job-dismiss', { id: j.id }, { timeoutMs: 5000 });
        break;
      } catch (err) {
        if (!/cannot accept/i.test(messageOf(err))) break;
        await sleep(100);
      }
    }
  }
  const nodes = await proc.qmp.execute('query-named-block-nodes', { flat: true }, { timeoutMs: 5000 }).catch(() => []);
  for (const n of nodes) if (n['node-name'].startsWith('mig-')) await delNode(proc.qmp, n['node-name']);
}

/** A storage move: per disk, keep whichever file the VM really uses; remove the other copy. */
async function recoverStorage(e: MoveHost, r: MigrationRecord, log: (m: string) => void): Promise<void> {
  const spec = await e.vms.spec(r.vm);
  const proc = e.vms.proc(r.vm);
  const inUse = new Map<string, string>();
  if (proc) {
    await dropBlockLeftovers(proc);
    for (const b of await proc.qmp.execute('query-block', undefined, { timeoutMs: 5000 })) {
      const id = spec.disks.find((d) => b.qdev?.includes(`/${d.id}/`) || b.qdev === d.id)?.id;
      if (id && b.inserted) inUse.set(id, b.inserted.file);
    }
    // Nodes of copies that never became the guest's disk.
    const nodes = await proc.qmp
      .execute('query-named-block-nodes', { flat: true }, { timeoutMs: 5000 })
      .catch(() => []);
    const used = new Set([...inUse.values()]);
    for (const n of nodes)
      if (/-m[0-9a-z]+(-file)?$/.test(n['node-name']) && !used.has(n.file)) await delNode(proc.qmp, n['node-name']);
  }
  let changed = false;
  for (const d of r.disks) {
    const disk = spec.disks.find((x) => x.id === d.id);
    if (!disk) continue;
    if (inUse.get(d.id) === d.destination) {
      disk.path = d.destination; // pivoted before the restart: the copy is the disk now
      changed = true;
      await fsp.rm(d.source, { force: true });
      log(`disk ${d.id} had switched to ${d.destination}: kept`);
    } else {
      await fsp.rm(d.destination, { force: true });
      log(`disk ${d.id}: the partial copy ${d.destination} was removed`);
    }
  }
  if (changed) await saveVm(spec);
  r.state = 'failed';
  r.error = {
    code: 'E_AGENT_RESTARTED',
    message: `The storage move of VM '${r.vm}' was interrupted by an agent restart; ${changed ? 'disks that had switched keep their new place, the others stay where they were' : 'its files stay where they were'}; move it again`,
  };
}
