// The checked backing chains of a VM's disks, which a start pins into QEMU's nodes (qemu/argv.ts).
import fs from 'node:fs';
import { InvalidInputError } from '../errors.js';
import type { ChainLayer, DiskChains } from '../qemu/argv.js';
import { assertInUsablePool, type PoolDef } from '../storage/pools.js';
import { writableLayers } from '../checkpoint/store.js';
import type { VmSpec } from './spec.js';
import { probeImage } from './image.js';

/**
 * Every disk of the VM is in a pool this host may use (a revoked grant stops a start), and so
 * is every file its image refers to: QEMU opens a qcow2's backing chain from the image's header,
 * which whoever can write the pool can point at any file of this host (e.g. /dev/sda). Each
 * existing non-raw image is probed (headers only, -U: a moving VM's source holds it) and must
 * have the format its spec says. A disk not made yet (an arriving copy) has nothing to check.
 * Returns the chains checked, for a start to pin (QEMU then reads no header's backing name),
 * the layers of the VM's own checkpoints marked writable (qemu/argv.ts backingArgs).
 */
export async function checkDiskChains(
  spec: VmSpec,
  pools: PoolDef[],
  host: string,
  opts: { signal?: AbortSignal } = {},
): Promise<DiskChains> {
  const chains = new Map<string, ChainLayer[]>();
  const own = await writableLayers(spec);
  for (const d of spec.disks) {
    const what = `disk ${d.id} of VM '${spec.name}'`;
    await assertInUsablePool(pools, host, d.path, what);
    if (d.format === 'raw' || !fs.existsSync(d.path)) continue;
    const { chain } = await probeImage(d.path, {
      pools,
      host,
      what,
      forceShare: true,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    if (chain[0] && chain[0].format !== d.format)
      throw new InvalidInputError(
        `Cannot use ${what}: ${d.path} is a ${chain[0].format} image, not ${d.format} as its vm.json says; ` +
          'fix the format in vm.json or convert the image',
        { path: d.path },
      );
    chains.set(
      d.id,
      chain.map((c, k): ChainLayer => (k > 0 && own.has(c.path) ? { ...c, writable: true } : c)),
    );
  }
  return chains;
}
