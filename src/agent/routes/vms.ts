import fsp from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import { actions } from '../../api/actions.js';
import { registerAction } from '../server.js';
import type { VmInventory } from '../vms.js';
import { sleep } from '../../util/exec.js';

export function vmRoutes(app: FastifyInstance, vms: VmInventory): void {
  registerAction(app, actions.vmList, () => vms.list());
  registerAction(app, actions.vmCreate, ({ body, signal }) => vms.create(body, { signal }));
  registerAction(app, actions.vmImport, ({ body, signal }) => vms.import(body, { signal }));
  registerAction(app, actions.vmShow, ({ params }) => vms.view(params.name));
  registerAction(app, actions.vmStart, ({ params }) => vms.start(params.name));
  registerAction(app, actions.vmStop, ({ params, body }) => vms.stop(params.name, body));
  registerAction(app, actions.vmPause, ({ params }) => vms.pause(params.name));
  registerAction(app, actions.vmResume, ({ params }) => vms.resume(params.name));
  registerAction(app, actions.vmSet, ({ params, body, signal }) => vms.set(params.name, body, { signal }));
  registerAction(app, actions.checkpointList, ({ params }) => vms.checkpoints(params.name));
  registerAction(app, actions.checkpointNew, ({ params, body, signal }) =>
    vms.checkpointNew(params.name, body.name, { signal }),
  );
  registerAction(app, actions.checkpointApply, ({ params, body, signal }) =>
    vms.checkpointApply(params.name, params.checkpoint, body.discard, { signal }),
  );
  registerAction(app, actions.checkpointRemove, async ({ params, signal }) => {
    await vms.checkpointRemove(params.name, params.checkpoint, { signal });
    return { ok: true as const };
  });
  registerAction(app, actions.vmRemove, async ({ params, query }) => {
    await vms.remove(params.name, query);
    return { ok: true as const };
  });

  // The serial console: the tail of the log, then (follow=true) whatever the guest prints
  // next, until the client disconnects.
  registerAction(app, actions.vmConsole, async ({ params, query, signal }, _req, reply) => {
    const file = vms.consoleFile(params.name);
    const size = await fsp.stat(file).then(
      (s) => s.size,
      () => 0,
    );
    let pos = Math.max(0, size - query.tail);
    const readFrom = async (): Promise<Buffer> => {
      const fh = await fsp.open(file, 'r').catch(() => null);
      if (!fh) return Buffer.alloc(0);
      try {
        const st = await fh.stat();
        if (st.size < pos) pos = 0; // log rotated by a restart
        const buf = Buffer.alloc(Math.min(st.size - pos, 4 * 1024 * 1024));
        const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
        pos += bytesRead;
        return buf.subarray(0, bytesRead);
      } finally {
        await fh.close();
      }
    };
    if (!query.follow) {
      void reply.type('text/plain; charset=utf-8');
      return (await readFrom()).toString('utf8');
    }
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
    while (!signal.aborted && !reply.raw.destroyed) {
      const chunk = await readFrom();
      if (chunk.length) reply.raw.write(chunk);
      await sleep(200, signal).catch(() => undefined);
    }
    reply.raw.end();
    return undefined;
  });
}
