import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { peerActions } from '../../api/peer-actions.js';
import { registerAction } from '../server.js';
import type { Engine } from '../engine.js';

export function migrationRoutes(app: FastifyInstance, engine: Engine): void {
  registerAction(app, actions.compare, async ({ body, signal }) =>
    engine.migrations.compare(body.vm, body.to, body.options, { signal }),
  );
  registerAction(app, actions.migrationCreate, async ({ body }) => engine.migrations.create(body));
  registerAction(app, actions.storageMove, async ({ body }) => engine.migrations.createStorageMove(body));
  registerAction(app, actions.migrationList, async ({ query }) => engine.migrations.list(query.all));
  registerAction(app, actions.migrationShow, async ({ params }) => engine.migrations.get(params.id));
  registerAction(app, actions.migrationCancel, async ({ params }) => engine.migrations.cancel(params.id));
}

/** Host-to-host routes of the migration protocol. */
export function peerRoutes(app: FastifyInstance, engine: Engine): void {
  registerAction(app, peerActions.vms, async () => engine.vmIds());
  registerAction(app, peerActions.cpuModels, async () =>
    (await engine.cpuModels()).map((m) => ({
      name: m.name,
      unavailableFeatures: m.unavailableFeatures,
      migrationSafe: m.migrationSafe,
    })),
  );
  registerAction(app, peerActions.prepare, async ({ body, signal }, req) =>
    engine.incoming.prepare(body, { signal, localAddress: req.socket.localAddress }),
  );
  registerAction(app, peerActions.status, async ({ params }) => engine.incoming.view(params.id));
  registerAction(app, peerActions.finish, async ({ params }) => engine.incoming.finish(params.id));
  registerAction(app, peerActions.abort, async ({ params }) => {
    await engine.incoming.abort(params.id);
    return { ok: true as const };
  });
  registerAction(app, peerActions.haStart, async ({ body }) => {
    await engine.haStart(body.spec, body.generation);
    return { ok: true as const };
  });
  registerAction(app, peerActions.adopt, async ({ body }) => {
    await engine.adoptStopped(body.spec);
    return { ok: true as const };
  });
}
