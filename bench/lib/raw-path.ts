// The raw side of the benchmark: the same probe VM spec, started with our argv builder and
// moved with nothing but QmpClient calls — exactly QEMU-NOTES §A, no orchestration.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { buildArgv } from '../../src/qemu/argv.js';
import { QemuProcess } from '../../src/qemu/process.js';
import type { Accelerator } from '../../src/qemu/accel.js';
import type { MigrationInfo } from '../../src/qemu/commands.js';
import { supportsDirectIo } from '../../src/vm/lifecycle.js';
import type { VmSpec } from '../../src/vm/spec.js';
import type { HeartbeatTail } from './heartbeat-tail.js';
import { RAW_TLS_HOSTNAME } from './raw-tls.js';
import { TLS_PRIORITY } from '../../src/migration/tls.js';

/** Same value Ferry's policy uses for "unlimited" (QEMU-NOTES: always set it; the default is 128 MiB/s). */
export const RAW_MAX_BANDWIDTH = 100 * 1024 ** 3;
export const RAW_DOWNTIME_LIMIT_MS = 300;

export interface RawMoveResult {
  ok: boolean;
  error: string | null;
  /** migrate command sequence start → destination running (both QEMUs already up). */
  wallMs: number;
  /** Starting the destination QEMU and connecting QMP (before wallMs starts). */
  destSpawnMs: number;
  /** Quitting the source afterwards (not in wallMs). */
  sourceQuitMs: number;
  downtimeMs: number | null;
  /** QEMU's `ram.downtime-bytes`: what it sent with the guest paused (its last pass). */
  pausedBytes: number | null;
  qemuTotalMs: number | null;
  bytesTransferred: number | null;
  passes: number | null;
  /** The first `completed` reply had total-time 0 / downtime 0 (QEMU 7.2 race) and was asked again. */
  statsRequeried: boolean;
  /** performance.now() at the start and end of wallMs, for the heartbeat window. */
  t0: number;
  t1: number;
}

/** Every QEMU this module starts, so the benchmark can kill them on any exit path. */
export const rawProcesses = new Set<QemuProcess>();
let stopping = false;
// Read through a function: after one `if (stopping) throw`, TypeScript would take a second
// read of the variable (after an await) to be always false.
const isStopping = (): boolean => stopping;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class RawVm {
  private seq = 0;
  current: QemuProcess | null = null;
  side: 'A' | 'B' = 'A';

  constructor(
    readonly spec: VmSpec,
    readonly accel: Accelerator,
    readonly runRoot: string,
    readonly tail: HeartbeatTail,
    readonly downtimeLimitMs = RAW_DOWNTIME_LIMIT_MS,
  ) {}

  private async spawn(incoming: boolean): Promise<QemuProcess> {
    if (stopping) throw new Error('the benchmark is stopping');
    const runDir = path.join(this.runRoot, `qemu-${String(++this.seq).padStart(2, '0')}${incoming ? '-in' : ''}`);
    await fsp.mkdir(runDir, { recursive: true });
    const paths = {
      qmpSocket: path.join(runDir, 'qmp.sock'),
      serialLog: path.join(runDir, 'serial.log'),
      pidFile: path.join(runDir, 'qemu.pid'),
    };
    const argv = buildArgv(this.spec, {
      accel: this.accel,
      paths,
      incoming,
      directIo: (d) => supportsDirectIo(d.path),
    });
    await fsp.writeFile(path.join(runDir, 'argv.json'), JSON.stringify(argv));
    this.tail.add(paths.serialLog, true);
    const proc = await QemuProcess.spawn(argv, {
      vm: `${this.spec.name}#${this.seq}`,
      runDir,
      qmpSocket: paths.qmpSocket,
      pidFile: paths.pidFile,
      timeoutMs: 20_000,
    });
    rawProcesses.add(proc);
    if (isStopping()) {
      await proc.kill();
      throw new Error('the benchmark is stopping');
    }
    void proc.exited.then(() => rawProcesses.delete(proc));
    return proc;
  }

  /** Starts the VM (first boot) and waits until its heartbeat runs. */
  async boot(): Promise<void> {
    const from = this.tail.count;
    this.current = await this.spawn(false);
    await this.tail.waitBeats(from, 25, 60_000);
  }

  async pause(): Promise<void> {
    await this.current?.qmp.execute('stop', undefined, { timeoutMs: 10_000 });
  }
  async resume(): Promise<void> {
    await this.current?.qmp.execute('cont', undefined, { timeoutMs: 10_000 });
  }

  /**
   * One move to a fresh destination process: QEMU-NOTES §A, polled every 10 ms. With `tlsDir`
   * (see raw-tls.ts) the stream runs over TLS as Ferry's does: a tls-creds-x509 object on each
   * side made inside the timed sequence (Ferry makes them per move too), the same priority.
   */
  async move(tlsDir?: string): Promise<RawMoveResult> {
    const src = this.current;
    const res: RawMoveResult = {
      ok: false,
      error: null,
      wallMs: NaN,
      destSpawnMs: NaN,
      sourceQuitMs: NaN,
      downtimeMs: null,
      pausedBytes: null,
      qemuTotalMs: null,
      bytesTransferred: null,
      passes: null,
      statsRequeried: false,
      t0: NaN,
      t1: NaN,
    };
    if (!src || src.hasExited) {
      res.error = 'the source QEMU is not running';
      return res;
    }
    const s0 = performance.now();
    let dst: QemuProcess;
    try {
      dst = await this.spawn(true);
    } catch (err) {
      res.error = `starting the destination: ${(err as Error).message}`;
      return res;
    }
    res.destSpawnMs = performance.now() - s0;
    const o = { timeoutMs: 10_000 };
    let started = false;
    try {
      res.t0 = performance.now();
      const tlsObject = (
        endpoint: 'server' | 'client',
      ): Record<string, unknown> & { 'qom-type': string; id: string } => ({
        'qom-type': 'tls-creds-x509',
        id: `raw-tls-${endpoint}`,
        endpoint,
        dir: tlsDir,
        'verify-peer': true,
        priority: TLS_PRIORITY,
      });
      if (tlsDir) {
        await dst.qmp.execute('object-add', tlsObject('server'), o);
        await dst.qmp.execute('migrate-set-parameters', { 'tls-creds': 'raw-tls-server' }, o);
      }
      await dst.qmp.execute(
        'migrate-set-capabilities',
        {
          capabilities: [
            { capability: 'events', state: true },
            { capability: 'late-block-activate', state: true },
          ],
        },
        o,
      );
      await dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' }, o);
      const port = (await dst.qmp.execute('query-migrate', undefined, o))['socket-address']?.[0]?.port;
      if (!port) throw new Error('the destination did not report its listening port');
      await src.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] }, o);
      // The source may have been a TLS destination: its tls-creds are set either way.
      if (tlsDir) await src.qmp.execute('object-add', tlsObject('client'), o);
      await src.qmp.execute(
        'migrate-set-parameters',
        {
          'max-bandwidth': RAW_MAX_BANDWIDTH,
          'downtime-limit': this.downtimeLimitMs,
          'tls-creds': tlsDir ? 'raw-tls-client' : '',
          'tls-hostname': tlsDir ? RAW_TLS_HOSTNAME : '',
        },
        o,
      );
      await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` }, o);
      started = true;
      let info: MigrationInfo = {};
      const until = performance.now() + 120_000;
      for (;;) {
        info = await src.qmp.execute('query-migrate', undefined, o);
        if (info.status === 'completed') break;
        if (info.status === 'failed' || info.status === 'cancelled')
          throw new Error(
            `migration ${info.status}: ${info['error-desc'] ?? 'no reason'}; dest: ${await dst.stderrText()}`,
          );
        if (performance.now() > until)
          throw new Error(`not completed within 120 s (status ${info.status}, pass ${info.ram?.['dirty-sync-count']})`);
        await sleep(10);
      }
      // Never cont an incoming VM before its side has completed too (QEMU-NOTES §E).
      const dUntil = performance.now() + 30_000;
      for (;;) {
        const d = await dst.qmp.execute('query-migrate', undefined, o);
        if (d.status === 'completed') break;
        if (d.status === 'failed') throw new Error(`destination failed: ${await dst.stderrText()}`);
        if (performance.now() > dUntil) throw new Error(`destination not completed within 30 s (status ${d.status})`);
        await sleep(10);
      }
      await dst.qmp.execute('cont', undefined, o);
      res.t1 = performance.now();
      res.wallMs = res.t1 - res.t0;
      // QEMU 7.2 reports `completed` a moment before it fills in total-time and downtime
      // (both read 0 then): ask again until they are set, now that the guest runs.
      for (let i = 0; i < 200 && !(info['total-time'] ?? 0); i++) {
        await sleep(10);
        info = await src.qmp.execute('query-migrate', undefined, o);
        res.statsRequeried = true;
      }
      res.downtimeMs = info.downtime ?? null;
      res.pausedBytes = info.ram?.['downtime-bytes'] ?? null;
      res.qemuTotalMs = info['total-time'] ?? null;
      res.bytesTransferred = info.ram?.transferred ?? null;
      res.passes = info.ram?.['dirty-sync-count'] ?? null;
      res.ok = true;
    } catch (err) {
      res.error = (err as Error).message;
      // Roll back: cancel the stream if it still runs, resume the source, drop the destination.
      try {
        if (started) {
          const st = await src.qmp.execute('query-migrate', undefined, { timeoutMs: 5000 });
          if (st.status && !['completed', 'failed', 'cancelled'].includes(st.status))
            await src.qmp.execute('migrate_cancel', undefined, { timeoutMs: 5000 });
        }
        const run = await src.qmp.execute('query-status', undefined, { timeoutMs: 5000 });
        if (!run.running) await src.qmp.execute('cont', undefined, { timeoutMs: 5000 });
        // Its next TLS move adds its client object again.
        if (tlsDir)
          await src.qmp.execute('object-del', { id: 'raw-tls-client' }, { timeoutMs: 5000 }).catch(() => undefined);
      } catch (e) {
        res.error += `; resuming the source: ${(e as Error).message}`;
      }
      await dst.kill();
      return res;
    }
    const q0 = performance.now();
    await src.quit({ timeoutMs: 10_000 });
    res.sourceQuitMs = performance.now() - q0;
    this.current = dst;
    this.side = this.side === 'A' ? 'B' : 'A';
    return res;
  }

  async shutdown(): Promise<void> {
    for (const p of [...rawProcesses]) await p.quit({ timeoutMs: 5000 }).catch(() => p.kill());
    this.current = null;
  }
}

/** Kills every raw QEMU; with `final`, no new one may start afterwards. */
export async function killAllRaw(final = false): Promise<void> {
  if (final) stopping = true;
  await Promise.all([...rawProcesses].map((p) => p.kill().catch(() => undefined)));
  rawProcesses.clear();
}
