// The destination's half of the protocol (shared/DESIGN.md §4): Prepare starts QEMU with
// `-S -incoming defer` listening on this host's migration address, on a port opened for
// this one migration; Finish runs the VM only after the source completed and confirmed
// (two-phase: the VM never runs on both hosts); Abort removes everything Prepare created.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { createImage } from '../qemu/img.js';
import { saveVm, configFile, exists } from '../vm/folder.js';
import { assertInUsablePool, poolStatus } from '../storage/pools.js';
import { FerryError, messageOf } from '../errors.js';
import { isQemuAlive, type QemuProcess } from '../qemu/process.js';
import { startVm } from '../vm/lifecycle.js';
import { parseVmSpec, type VmSpec } from '../vm/spec.js';
import type { MoveHost } from './host.js';
import type { SlotQueue } from './queue.js';
import type { IncomingRequest, IncomingView } from '../api/peer-actions.js';
import { addTlsCreds, qemuTlsDir } from './tls.js';
import { sleep } from '../util/exec.js';
import { portAllocatorFor } from '../agent/ports.js';
import { advertisedMigrationAddress } from '../agent/migration-address.js';

interface Incoming {
  jobId: string;
  spec: VmSpec;
  source: string;
  proc: QemuProcess | null;
  state: IncomingView['state'];
  uri: string | null;
  reason: string | null;
  createdRunDir: boolean;
  /** Files and folders Prepare created for a shared-nothing move (removed on abort). */
  createdFiles: string[];
  createdDirs: string[];
  nbd: { host: string; port: number } | null;
  stopped: boolean;
}

interface Journal {
  jobId: string;
  vmId: string;
  vmName: string;
  createdRunDir: boolean;
  createdFiles: string[];
  createdDirs: string[];
}

export class IncomingManager {
  private items = new Map<string, Incoming>();
  constructor(
    private host: MoveHost,
    private slots: SlotQueue,
  ) {}

  private journalDir(): string {
    return path.join(this.host.dataDir, 'incoming');
  }

  /** Written before each step of Prepare, so an agent that dies can remove what it created. */
  private async journal(i: Incoming): Promise<void> {
    const j: Journal = {
      jobId: i.jobId,
      vmId: i.spec.id,
      vmName: i.spec.name,
      createdRunDir: i.createdRunDir,
      createdFiles: i.createdFiles,
      createdDirs: i.createdDirs,
    };
    await fsp.mkdir(this.journalDir(), { recursive: true });
    const f = path.join(this.journalDir(), `${i.jobId}.json`);
    await fsp.writeFile(f + '.tmp', JSON.stringify(j));
    await fsp.rename(f + '.tmp', f);
  }

  private async dropJournal(jobId: string): Promise<void> {
    await fsp.rm(path.join(this.journalDir(), `${jobId}.json`), { force: true });
  }

  /**
   * Agent start: incoming VMs of a previous life never finished (or their finish was not
   * recorded). Kill their QEMU and remove what Prepare created; a VM that did finish is
   * registered and is left alone.
   */
  async recover(): Promise<string[]> {
    const e = this.host;
    const done: string[] = [];
    for (const f of await fsp.readdir(this.journalDir()).catch(() => [] as string[])) {
      if (!f.endsWith('.json')) continue;
      let j: Journal;
      try {
        j = JSON.parse(await fsp.readFile(path.join(this.journalDir(), f), 'utf8')) as Journal;
      } catch {
        await fsp.rm(path.join(this.journalDir(), f), { force: true });
        continue;
      }
      const registered = e.vms.ids().some((v) => v.id === j.vmId);
      if (!registered) {
        const runDir = e.runDir(j.vmId);
        const pid = Number((await fsp.readFile(path.join(runDir, 'qemu.pid'), 'utf8').catch(() => '')).trim());
        if (pid > 0 && isQemuAlive(pid)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* gone */
          }
          for (let k = 0; k < 50 && isQemuAlive(pid); k++) await sleep(100);
        }
        for (const p of j.createdFiles) await fsp.rm(p, { force: true });
        for (const d of [...j.createdDirs].reverse()) await fsp.rmdir(d).catch(() => undefined);
        if (j.createdRunDir) await fsp.rm(runDir, { recursive: true, force: true });
        e.emit('migration.incoming', {
          vm: j.vmName,
          jobId: j.jobId,
          state: 'recovered',
          note: 'an unfinished incoming VM was removed after an agent restart',
        });
        done.push(j.jobId);
      }
      await this.dropJournal(j.jobId);
    }
    return done;
  }

  view(jobId: string): IncomingView {
    const i = this.items.get(jobId);
    if (!i)
      return {
        jobId,
        vm: '',
        state: 'gone',
        uri: null,
        tlsHostname: this.host.name,
        reason: 'it has no such incoming move (its agent restarted and removed it, or it was aborted)',
        nbd: null,
      };
    if (i.state === 'prepared' && i.proc?.hasExited) {
      i.state = 'failed';
      i.reason ??= 'the destination QEMU exited';
    }
    // A write to an NBD export that fails for lack of space does not fail: QEMU holds it
    // (its default for ENOSPC is to stop and retry), so the source only sees a stall. Say why.
    const ioErr =
      i.state === 'prepared' && i.proc && !i.proc.hasExited
        ? [...i.proc.qmp.history].reverse().find((e) => e.event === 'BLOCK_IO_ERROR')
        : undefined;
    const ioReason = ioErr
      ? `disk '${String(ioErr.data?.device || ioErr.data?.['node-name'] || '?')}' cannot be written (${String(ioErr.data?.reason ?? 'I/O error')}${ioErr.data?.nospace ? ': the destination pool is full' : ''})`
      : null;
    const full =
      i.state === 'prepared' && !ioReason
        ? [...new Set(i.createdFiles.map((f) => path.dirname(f)))].find((d) => {
            try {
              const st = fs.statfsSync(d);
              return st.bavail * st.bsize < 1024 * 1024;
            } catch {
              return false;
            }
          })
        : undefined;
    return {
      jobId,
      vm: i.spec.name,
      state: i.state,
      uri: i.uri,
      tlsHostname: this.host.name,
      reason: i.reason ?? ioReason ?? (full ? `no space left in ${full} (the destination pool is full)` : null),
      nbd: i.nbd,
    };
  }

  /** Names of VMs arriving here (they count as present for name checks). */
  arriving(): Array<{ name: string; id: string }> {
    return [...this.items.values()]
      .filter((i) => i.state === 'prepared')
      .map((i) => ({ name: i.spec.name, id: i.spec.id }));
  }

  async prepare(
    req: IncomingRequest,
    opts: { signal?: AbortSignal; localAddress?: string } = {},
  ): Promise<IncomingView> {
    const e = this.host;
    const spec = parseVmSpec(req.spec, 'accept the incoming VM');
    const settings = e.settings();
    if (!settings.enabled)
      throw new FerryError(
        'E_MIGRATION_DISABLED',
        `Cannot receive VM '${spec.name}' on host '${e.name}': migrations are disabled here; run 'ferry host set ${e.name} --migrations on'`,
        {},
      );
    if (
      e.vms.ids().some((v) => v.name === spec.name || v.id === spec.id) ||
      this.arriving().some((a) => a.name === spec.name)
    ) {
      throw new FerryError(
        'E_NAME_EXISTS',
        `Cannot receive VM '${spec.name}' on host '${e.name}': a VM with that name or id is already here`,
        {},
      );
    }
    if (req.storage) await this.checkStorage(spec, req.storage);
    await e.vms.checkStorage(spec);
    if (!this.slots.tryAcquire(req.jobId)) {
      throw new FerryError(
        'E_HOST_BUSY',
        `Cannot receive VM '${spec.name}' on host '${e.name}' now: ${settings.maxLive} live migrations are already running here (max live); it stays queued`,
        {},
      );
    }
    const runDir = e.runDir(spec.id);
    const item: Incoming = {
      jobId: req.jobId,
      spec,
      source: req.source,
      proc: null,
      state: 'prepared',
      uri: null,
      reason: null,
      createdRunDir: false,
      createdFiles: [],
      createdDirs: [],
      nbd: null,
      stopped: req.stopped,
    };
    this.items.set(req.jobId, item);
    try {
      item.createdRunDir = !(await fsp.access(runDir).then(
        () => true,
        () => false,
      ));
      await this.journal(item);
      if (req.storage) await this.createStorage(item, req.storage, opts.signal);
      await this.journal(item);
      // Incoming mode also for a stopped VM's disks: its images stay inactive for the guest
      // devices, so the NBD exports may write them (a running -S QEMU's devices would not share).
      const switches = await e.vms.prepareNics(spec);
      const proc = await startVm(spec, {
        runDir,
        accel: e.accelerator(),
        incoming: true,
        switches,
        signal: opts.signal,
      }).catch(async (err: unknown) => {
        await e.vms.releaseNics(spec);
        throw err;
      });
      void proc.exited.then(() => e.vms.releaseNics(spec));
      item.proc = proc;
      if (req.tls) {
        await addTlsCreds(proc.qmp, 'ferry-tls', 'server', await qemuTlsDir(e.tls, e.dataDir), opts.signal);
        // Only the source host's certificate may connect to this VM's stream and NBD exports.
        await proc.qmp.execute(
          'object-add',
          { 'qom-type': 'authz-simple', id: 'ferry-authz', identity: peerDn(req.source, e.domainId) },
          opts,
        );
      }
      if (!req.stopped) {
        const caps = [
          { capability: 'events' as const, state: true },
          { capability: 'late-block-activate' as const, state: true },
        ];
        if (req.postcopy) caps.push({ capability: 'postcopy-ram' as never, state: true });
        await proc.qmp.execute('migrate-set-capabilities', { capabilities: caps }, opts);
        if (req.tls)
          await proc.qmp.execute(
            'migrate-set-parameters',
            { 'tls-creds': 'ferry-tls', 'tls-authz': 'ferry-authz' },
            opts,
          );
      }
      const addr = advertisedMigrationAddress(e.migrationListenAddress(), opts.localAddress, e.name);
      const host = addr.includes(':') ? `[${addr}]` : addr;
      if (req.storage) {
        // NBD exports of the new, empty disks on the migration address, for the source's mirrors.
        const nbdPort = await portAllocatorFor(e.cfg).allocate(addr, opts);
        const port = nbdPort.port;
        await proc.qmp
          .execute(
            'nbd-server-start',
            {
              addr: { type: 'inet', data: { host: addr, port: String(port) } },
              ...(req.tls ? { 'tls-creds': 'ferry-tls', 'tls-authz': 'ferry-authz' } : {}),
            },
            opts,
          )
          .finally(() => {
            nbdPort.release();
          });
        for (const d of req.storage.disks) {
          await proc.qmp.execute(
            'block-export-add',
            { type: 'nbd', id: `exp-${d.id}`, 'node-name': d.id, name: d.id, writable: true },
            opts,
          );
        }
        item.nbd = { host: addr, port };
      }
      if (!req.stopped) {
        const stream = await portAllocatorFor(e.cfg).allocate(addr, opts);
        await proc.qmp.execute('migrate-incoming', { uri: `tcp:${host}:${stream.port}` }, opts).finally(() => {
          stream.release();
        });
        const info = await proc.qmp.execute('query-migrate', undefined, opts);
        const port = info['socket-address']?.[0]?.port;
        if (!port)
          throw new FerryError('E_PREPARE', `Cannot receive VM '${spec.name}': QEMU did not report its listening port`);
        item.uri = `tcp:${host}:${port}`;
      }
      e.emit('migration.incoming', { vm: spec.name, jobId: req.jobId, state: 'prepared', source: req.source });
      // A failed incoming migration makes QEMU exit: note why, from its stderr.
      void proc.exited.then(async () => {
        if (item.state !== 'prepared') return;
        item.state = 'failed';
        // (The source's reachability probe of the NBD export leaves a harmless negotiation line.)
        item.reason =
          (await proc.stderrText())
            .split('\n')
            .filter((l) => l.trim() && !/option negotiation failed/.test(l))
            .join('\n') || 'the destination QEMU exited';
        // The source normally aborts us; if it does not within a minute, clean up anyway.
        setTimeout(() => {
          if (this.items.get(req.jobId) === item) void this.abort(req.jobId).catch(() => undefined);
        }, 60_000).unref();
      });
      return this.view(req.jobId);
    } catch (err) {
      await this.abort(req.jobId).catch(() => undefined);
      throw new FerryError(
        'E_PREPARE',
        `Cannot prepare host '${e.name}' to receive VM '${spec.name}': ${messageOf(err)}`,
        { cause: err },
      );
    }
  }

  /** The source completed and confirms: wait for the stream's end here, then run the VM. */
  async finish(jobId: string, opts: { signal?: AbortSignal } = {}): Promise<IncomingView> {
    const e = this.host;
    const i = this.items.get(jobId);
    if (!i)
      throw new FerryError(
        'E_INCOMING_NOT_FOUND',
        `Cannot finish incoming migration ${jobId} on host '${e.name}': it is not here (aborted or never prepared)`,
        {},
      );
    if (i.state === 'running') return this.view(jobId);
    const proc = i.proc;
    if (!proc || proc.hasExited || i.state !== 'prepared')
      throw new FerryError(
        'E_INCOMING_FAILED',
        `Cannot finish incoming VM '${i.spec.name}' on host '${e.name}': ${i.reason ?? 'its QEMU is gone'}`,
      );
    if (i.stopped) {
      // A stopped VM's disks arrived: stop serving them, flush and quit, register the VM.
      await proc.qmp.execute('nbd-server-stop', undefined, opts).catch(() => undefined);
      await proc.quit({ timeoutMs: 10_000 });
      i.state = 'running';
      await e.vms.arrivedStopped(i.spec, { skipStorageCheck: true });
      await this.dropJournal(jobId);
      this.slots.release(jobId);
      this.items.delete(jobId);
      return { jobId, vm: i.spec.name, state: 'running', uri: null, tlsHostname: e.name, reason: null, nbd: null };
    }
    // Never `cont` before the incoming side has completed (QEMU would auto-run it later).
    const until = Date.now() + 30_000;
    for (;;) {
      const st = await proc.qmp.execute('query-migrate', undefined, { signal: opts.signal, timeoutMs: 10_000 });
      if (st.status === 'completed') break;
      if (st.status === 'postcopy-active' || st.status === 'postcopy-paused' || st.status === 'postcopy-recover') {
        const run = await proc.qmp.execute('query-status', undefined, opts);
        if (run.running) break; // post-copy: the VM already runs here, pages still arrive
      }
      if (st.status === 'failed')
        throw new FerryError(
          'E_INCOMING_FAILED',
          `Cannot finish incoming VM '${i.spec.name}': the stream failed on host '${e.name}'`,
        );
      if (Date.now() > until)
        throw new FerryError(
          'E_TIMEOUT',
          `Cannot finish incoming VM '${i.spec.name}' on host '${e.name}': the stream did not complete within 30 s`,
        );
      await sleep(20, opts.signal);
    }
    if (i.nbd) await proc.qmp.execute('nbd-server-stop', undefined, opts).catch(() => undefined);
    const run = await proc.qmp.execute('query-status', undefined, opts);
    if (!run.running) await proc.qmp.execute('cont', undefined, opts);
    i.state = 'running';
    e.vms.arrivedRunning(i.spec, proc);
    await this.dropJournal(jobId);
    this.slots.release(jobId);
    e.emit('migration.incoming', { vm: i.spec.name, jobId, state: 'running' });
    this.items.delete(jobId);
    return { jobId, vm: i.spec.name, state: 'running', uri: i.uri, tlsHostname: e.name, reason: null, nbd: null };
  }

  /** Kills the incoming QEMU and removes what Prepare created. Idempotent. */
  async abort(jobId: string): Promise<void> {
    const e = this.host;
    const i = this.items.get(jobId);
    if (!i) return;
    if (i.state === 'running')
      throw new FerryError(
        'E_INCOMING_RUNNING',
        `Cannot abort incoming VM '${i.spec.name}': it already runs on host '${e.name}'`,
      );
    this.items.delete(jobId);
    if (i.proc) await i.proc.kill();
    const runDir = e.runDir(i.spec.id);
    if (i.createdRunDir) await fsp.rm(runDir, { recursive: true, force: true });
    else
      for (const f of ['qmp.sock', 'qmp-admin.sock', 'qemu.pid', 'argv.json'])
        await fsp.rm(`${runDir}/${f}`, { force: true });
    for (const f of i.createdFiles) await fsp.rm(f, { force: true });
    for (const d of [...i.createdDirs].reverse()) await fsp.rmdir(d).catch(() => undefined);
    this.slots.release(jobId);
    await this.dropJournal(jobId);
    e.emit('migration.incoming', { vm: i.spec.name, jobId, state: 'aborted' });
  }

  /** Every destination path inside a pool this host may use, not taken, with room for the data. */
  private async checkStorage(spec: VmSpec, st: NonNullable<IncomingRequest['storage']>): Promise<void> {
    const e = this.host;
    const pools = e.pools();
    const need = new Map<string, number>();
    for (const d of st.disks) {
      const pool = await assertInUsablePool(pools, e.name, d.path, `destination of disk ${d.id}`);
      if (await exists(d.path))
        throw new FerryError(
          'E_DEST_PATH',
          `Cannot receive disk '${d.id}' of VM '${spec.name}' at ${d.path} on host '${e.name}': a file is already there; choose another path`,
          {},
        );
      need.set(pool.name, (need.get(pool.name) ?? 0) + d.allocatedBytes);
    }
    for (const dir of st.dirs) await assertInUsablePool(pools, e.name, dir, 'destination folder');
    for (const f of st.files) {
      if (await exists(f.path))
        throw new FerryError(
          'E_DEST_PATH',
          `Cannot receive VM '${spec.name}' on host '${e.name}': ${f.path} already exists; choose another --config-path or --storage-path`,
          {},
        );
    }
    if (await exists(configFile(spec.configPath)))
      throw new FerryError(
        'E_DEST_PATH',
        `Cannot receive VM '${spec.name}' on host '${e.name}': ${spec.configPath} already holds a VM; choose another --config-path or --storage-path`,
        {},
      );
    for (const [name, bytes] of need) {
      const status = await poolStatus(
        pools.find((p) => p.name === name)!,
        e.name,
      );
      if (bytes > status.freeBytes) {
        throw new FerryError(
          'E_DEST_SPACE',
          `Cannot receive VM '${spec.name}' on host '${e.name}': its disks hold ${(bytes / 1048576).toFixed(0)} MiB but pool '${name}' has ${(status.freeBytes / 1048576).toFixed(0)} MiB free; free space or choose another pool`,
          {},
        );
      }
    }
  }

  private async createStorage(
    item: Incoming,
    st: NonNullable<IncomingRequest['storage']>,
    signal?: AbortSignal,
  ): Promise<void> {
    for (const dir of [...new Set([...st.dirs, ...st.disks.map((d) => path.dirname(d.path))])]) {
      const missing: string[] = [];
      for (let p = dir; !(await exists(p)); p = path.dirname(p)) missing.unshift(p);
      item.createdDirs.push(...missing);
      await this.journal(item);
      await fsp.mkdir(dir, { recursive: true });
    }
    // Journal every path first (none exists yet: checked by checkStorage), then create.
    item.createdFiles.push(
      ...st.files.map((f) => f.path),
      ...st.disks.map((d) => d.path),
      configFile(item.spec.configPath),
    );
    await this.journal(item);
    for (const f of st.files) await fsp.writeFile(f.path, Buffer.from(f.base64, 'base64'), { flag: 'wx' });
    for (const d of st.disks) await createImage(d.path, d.format, d.virtualSizeBytes, { signal });
    await saveVm(item.spec);
  }
}

/** The distinguished name QEMU (gnutls) reads from a host certificate of our domain. */
export function peerDn(host: string, domainId: string): string {
  return `O=ferry-domain-${domainId},OU=ferry-host,CN=${host}`;
}
