// `ferry agent`: the daemon of one host. It re-attaches to the VMs already running, serves
// the API over mutual TLS, and on SIGTERM stops serving without stopping any VM.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import { FerryError, messageOf } from '../errors.js';
import { domainIdOfCa } from '../domain/ca.js';
import { loadAgentConfig } from './config.js';
import { applyQemuUser } from './qemu-user.js';
import { Engine } from './engine.js';
import { buildServer } from './server.js';
import { AuditLog } from './audit.js';
import { auditRoutes } from './routes/audit.js';
import { hostRoutes } from './routes/host.js';
import { domainRoutes } from './routes/domain.js';
import { HostTls } from './tls.js';
import { vmRoutes } from './routes/vms.js';
import { switchRoutes } from './routes/switches.js';
import { poolRoutes } from './routes/pools.js';
import { eventRoutes } from './routes/events.js';
import { metaRoutes } from './routes/meta.js';
import { migrationRoutes, peerRoutes } from './routes/migrations.js';
import { clusterRoutes } from './routes/cluster.js';
import { notifySystemd } from './systemd.js';
import { consoleRoutes } from './routes/consoles.js';
import type { FastifyInstance } from 'fastify';

export interface AgentFlags {
  name: string;
  data: string;
  listen: string;
  migrationAddress?: string;
  tlsDir?: string;
  migrationPorts?: string;
  settings?: Parameters<typeof loadAgentConfig>[0]['settings'];
}

export interface RunningAgent {
  app: FastifyInstance;
  engine: Engine;
  close(): Promise<void>;
}

export async function startAgent(flags: AgentFlags, opts: { logLevel?: string } = {}): Promise<RunningAgent> {
  const t0 = Date.now();
  const cfg = await loadAgentConfig(flags);
  for (const f of [cfg.tls.ca, cfg.tls.cert, cfg.tls.key]) {
    if (!fs.existsSync(f))
      throw new FerryError(
        'E_TLS_MISSING',
        `Cannot start agent '${cfg.name}': ${f} is missing; enrol this host: ` +
          `'ferry host init ${cfg.name} --address ADDR' here, 'ferry domain sign' on the admin machine, ` +
          "then 'ferry host install-cert' here",
        {},
      );
  }
  const domainId = domainIdOfCa(await fsp.readFile(cfg.tls.ca, 'utf8'));
  if (!domainId)
    throw new FerryError(
      'E_TLS_MISSING',
      `Cannot start agent '${cfg.name}': ${cfg.tls.ca} is not a Ferry domain CA`,
      {},
    );
  // QEMU's QMP sockets live in DATA/run/<vm id>/; a Unix socket path has at most 107 bytes.
  const longest = path.join(cfg.dataDir, 'run', '00000000-0000-0000-0000-000000000000', 'qmp-admin.sock');
  if (Buffer.byteLength(longest) > 107) {
    throw new FerryError(
      'E_DATA_PATH_TOO_LONG',
      `Cannot start agent '${cfg.name}': its data folder ${cfg.dataDir} is too long for QEMU's control sockets ` +
        `(${Buffer.byteLength(longest)} of 107 bytes); use a shorter --data path`,
      {},
    );
  }
  await fsp.mkdir(cfg.dataDir, { recursive: true });
  const logger = pino({ level: opts.logLevel ?? process.env.FERRY_LOG_LEVEL ?? 'info', base: { host: cfg.name } });
  const tls = await HostTls.open(cfg.tls, { name: cfg.name, port: cfg.listen.port }, logger);
  await applyQemuUser(cfg, logger);
  const engine = new Engine(cfg, domainId);
  // Before init: its sweep of cut copies' bitmaps reports what it removed.
  engine.events.subscribe((e) => {
    if (e.type === 'vm.bitmaps') logger.info({ event: e }, e.message);
  });
  await engine.init();
  const audit = new AuditLog(path.join(cfg.dataDir, 'audit.log'), {
    onError: (err) => logger.error({ err: messageOf(err) }, 'cannot append to the audit log'),
  });
  const app = await buildServer({ cfg, logger, domainId, tls, audit });
  auditRoutes(app, audit, cfg.name);
  hostRoutes(app, engine.settings, tls);
  domainRoutes(app, tls);
  vmRoutes(app, engine.vms);
  switchRoutes(app, engine.switches);
  poolRoutes(app, engine.pools);
  eventRoutes(app, engine.events);
  metaRoutes(app, engine);
  migrationRoutes(app, engine.migrations, engine.cluster);
  peerRoutes(app, engine);
  clusterRoutes(app, engine.cluster);
  consoleRoutes(app, engine.vms, audit);
  await app.listen({ host: cfg.listen.host, port: cfg.listen.port });
  // Cluster decisions and fencing go to the log too: they are what an operator reads after an incident.
  engine.events.subscribe((e) => {
    if (e.type.startsWith('cluster.') || e.type === 'vm.fenced' || e.type === 'vm.ha-started')
      logger.info({ event: e }, e.type);
    // A guest that died right after a move is explained where an operator looks first.
    if (e.type === 'vm.guest-trouble') logger.warn({ event: e }, e.message);
  });
  if (cfg.cluster)
    void engine.cluster.enable(cfg.cluster, {
      onRetry: (err) => logger.warn({ err: messageOf(err) }, 'cannot join the cluster yet; retrying'),
    });
  tls.start();
  logger.info({ startMs: Date.now() - t0, listen: cfg.listen }, `agent ${cfg.name} ready`);
  return {
    app,
    engine,
    async close() {
      tls.close();
      await app.close();
      await audit.flush();
      await engine.close();
    },
  };
}

/** Runs the agent until SIGTERM/SIGINT. */
export async function runAgent(flags: AgentFlags): Promise<void> {
  const agent = await startAgent(flags);
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await notifySystemd({ READY: '1', STATUS: `serving on ${flags.listen}` }).catch((err: unknown) => {
    agent.app.log.warn({ err: messageOf(err) }, 'cannot tell systemd the agent is ready');
  });
  await stopped;
  await notifySystemd({ STOPPING: '1' }).catch(() => undefined);
  await agent.close();
}
