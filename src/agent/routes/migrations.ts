import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { peerActions } from '../../api/peer-actions.js';
import { registerAction, sentFilesOf } from '../server.js';
import { FerryError } from '../../errors.js';
import type { ClusterNode } from '../../cluster/node.js';
import type { MigrationManager } from '../../migration/manager.js';
import type { HostSettings } from '../host-settings.js';
import type { VmInventory } from '../vms.js';
import { arrivingSpec, decideArrival } from '../../migration/arrival.js';
import { saveVm } from '../../vm/folder.js';
import { parseVmSpec } from '../../vm/spec.js';
import { authorizeCancel, authorizedDestination } from '../move-authz.js';
import type { PeerIdentity } from '../../domain/ca.js';
import type { MigrationRecord } from '../../migration/schemas.js';

export function migrationRoutes(app: FastifyInstance, migrations: MigrationManager, cluster: ClusterNode): void {
  // A host certificate: the destination must be a cluster member, reached at its etcd endpoint.
  // A prediction measures the guest (QEMU samples its pages for seconds, the agent reads pages of its
  // RAM for zeroes): an administrator's question; no host's drain or fail-back asks it.
  registerAction(app, actions.compare, async ({ body, signal }, req) => {
    const what = `compare VM '${body.vm}' with host '${body.to.name}'`;
    if (body.predict && req.peer?.role !== 'admin')
      throw new FerryError(
        'E_FORBIDDEN',
        `Cannot predict the move of VM '${body.vm}': a prediction measures the guest's memory, which only an ` +
          `administrator may ask for; use an admin certificate, or leave out predict`,
        { context: { caller: req.peer?.name ?? null } },
      );
    const to = await authorizedDestination(cluster, req.peer, body.to, what, { leaderOnly: false, signal });
    return migrations.compare(body.vm, to, body.options, {
      signal,
      predict: body.predict,
      ...(body.policy ? { policy: body.policy } : {}),
    });
  });
  // …and only the cluster's leader may order a move (src/agent/move-authz.ts).
  registerAction(app, actions.migrationCreate, async ({ body, signal }, req) => {
    const what = `move VM '${body.vm}' to host '${body.to.name}'`;
    const to = await authorizedDestination(cluster, req.peer, body.to, what, { leaderOnly: true, signal });
    return migrations.create({ ...body, to }, by(req.peer));
  });
  registerAction(app, actions.storageMove, ({ body }, req) => migrations.createStorageMove(body, by(req.peer)));
  registerAction(app, actions.migrationList, ({ query }) => Promise.resolve(migrations.list(query.all)));
  registerAction(app, actions.migrationShow, ({ params }) => Promise.resolve(migrations.get(params.id)));
  // A host may cancel only a move into it, or as a possible leader the cluster's own moves.
  registerAction(app, actions.migrationCancel, async ({ params, signal }, req) => {
    await authorizeCancel(cluster, req.peer, migrations.get(params.id), { signal });
    return migrations.cancel(params.id, { signal });
  });
}

function by(peer: PeerIdentity | undefined): MigrationRecord['requestedBy'] {
  return peer ? { name: peer.name, role: peer.role } : null;
}

export interface PeerParts {
  vms: VmInventory;
  migrations: MigrationManager;
  settings: HostSettings;
  cluster: ClusterNode;
}

/** Host-to-host routes of the migration protocol (and the leader's HA restarts). */
export function peerRoutes(app: FastifyInstance, p: PeerParts): void {
  // Arriving VMs count too: a source must not send a VM whose name or id is on its way here.
  registerAction(app, peerActions.vms, () => Promise.resolve([...p.vms.ids(), ...p.migrations.incoming.arriving()]));
  registerAction(app, peerActions.cpuModels, async () =>
    (await p.settings.cpuModels()).map((m) => ({
      name: m.name,
      unavailableFeatures: m.unavailableFeatures,
      migrationSafe: m.migrationSafe,
    })),
  );
  const incoming = p.migrations.incoming;
  registerAction(app, peerActions.prepare, ({ body, signal }, req) => {
    incoming.assertSource(body.jobId, req.peer, body.source);
    const files = sentFilesOf(req);
    return incoming.prepare(body, { signal, localAddress: req.socket.localAddress, ...(files ? { files } : {}) });
  });
  registerAction(app, peerActions.status, ({ params }, req) => {
    incoming.assertSource(params.id, req.peer);
    return Promise.resolve(incoming.view(params.id));
  });
  registerAction(app, peerActions.chain, ({ params, signal }, req) => {
    incoming.assertSource(params.id, req.peer);
    return incoming.chain(params.id, { signal, localAddress: req.socket.localAddress });
  });
  registerAction(app, peerActions.finish, ({ params }, req) => {
    incoming.assertSource(params.id, req.peer);
    return incoming.finish(params.id);
  });
  registerAction(app, peerActions.abort, async ({ params, query }, req) => {
    incoming.assertSource(params.id, req.peer);
    await incoming.abort(params.id, { discard: query.discard });
    return { ok: true as const };
  });
  registerAction(app, peerActions.haStart, async ({ body }) => {
    await p.cluster.haStart(body.spec, body.generation);
    return { ok: true as const };
  });
  registerAction(app, peerActions.adopt, async ({ body }, req) => {
    if (req.peer?.role !== 'admin' && req.peer?.name !== body.source)
      throw new FerryError(
        'E_FORBIDDEN',
        `Cannot adopt VM '${body.spec.name}': host '${req.peer?.name ?? '?'}' is not its source ` +
          `'${body.source}'; a host may hand over only its own VMs`,
      );
    const sent = parseVmSpec(body.spec, 'accept the VM');
    const arrival = await decideArrival(p.cluster.joined ? p.cluster : null, sent, body.source);
    const spec = arrivingSpec(sent, arrival);
    await p.vms.arrivedStopped(spec);
    // Its vm.json (on storage both hosts see) says from now on that it is not HA.
    if (arrival.note) await saveVm(spec);
    return { ok: true as const, ...(arrival.note ? { haNote: arrival.note } : {}) };
  });
}
