// `ferry agent`: the daemon of one host. It re-attaches to the VMs already running, serves
// the API over mutual TLS, and on SIGTERM stops serving without stopping any VM.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import { FerryError, messageOf } from '../errors.js';
import { domainIdOfCa } from '../domain/ca.js';
import { loadAgentConfig } from './config.js';
import { Engine } from './engine.js';
import { buildServer } from './server.js';
import { hostRoutes } from './routes/host.js';
import { vmRoutes } from './routes/vms.js';
import { switchRoutes } from './routes/switches.js';
import { poolRoutes } from './routes/pools.js';
import { eventRoutes } from './routes/events.js';
import { metaRoutes } from './routes/meta.js';
import { migrationRoutes, peerRoutes } from './routes/migrations.js';
import { clusterRoutes } from './routes/cluster.js';
import { consoleRoutes } from './routes/consoles.js';
import type { FastifyInstance } from 'fastify';

export interface AgentFlags {
  name: string;
  data: string;
  listen: string;
  migrationAddress?: string;
  tlsDir?: string;
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
        `Cannot start agent '${cfg.name}': ${f} is missing; issue a host certificate with 'ferry domain issue host ${cfg.name}' and put ca.crt, host.crt and host.key in ${cfg.tls.ca.replace(/\/ca\.crt$/, '')}`,
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
      `Cannot start agent '${cfg.name}': its data folder ${cfg.dataDir} is too long for QEMU's control sockets (${Buffer.byteLength(longest)} of 107 bytes); use a shorter --data path`,
      {},
    );
  }
  await fsp.mkdir(cfg.dataDir, { recursive: true });
  const logger = pino({ level: opts.logLevel ?? process.env.FERRY_LOG_LEVEL ?? 'info', base: { host: cfg.name } });
  const engine = new Engine(cfg, domainId);
  await engine.init();
  const app = await buildServer({ cfg, engine, logger, domainId });
  hostRoutes(app, engine);
  vmRoutes(app, engine);
  switchRoutes(app, engine);
  poolRoutes(app, engine);
  eventRoutes(app, engine);
  metaRoutes(app, engine);
  migrationRoutes(app, engine);
  peerRoutes(app, engine);
  clusterRoutes(app, engine);
  consoleRoutes(app, engine);
  await app.listen({ host: cfg.listen.host, port: cfg.listen.port });
  // Cluster decisions and fencing go to the log too: they are what an operator reads after an incident.
  engine.events.subscribe((e) => {
    if (e.type.startsWith('cluster.') || e.type === 'vm.fenced' || e.type === 'vm.ha-started')
      logger.info({ event: e }, e.type);
  });
  if (cfg.cluster)
    engine.enableCluster(cfg.cluster, {
      onRetry: (err) => logger.warn({ err: messageOf(err) }, 'cannot join the cluster yet; retrying'),
    });
  logger.info({ startMs: Date.now() - t0, listen: cfg.listen }, `agent ${cfg.name} ready`);
  return {
    app,
    engine,
    async close() {
      await app.close();
      await engine.close();
    },
  };
}

/** Runs the agent until SIGTERM/SIGINT. */
export async function runAgent(flags: AgentFlags): Promise<void> {
  const agent = await startAgent(flags);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      resolve();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  await agent.close();
}
