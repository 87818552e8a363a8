// A storage move's plan checks that each pool has room for what it copies (plan.ts). A cut copy
// kept in the pool (storage-resume.ts) that the move does not take over is deleted at its
// Begin, so its room counts as free: a retry to another path in a pool nearly full of that kept
// copy is not refused. On a real 64 MiB tmpfs pool (root: the mount).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { storagePlan } from '../../src/migration/plan.js';
import { keptCopyAt, keptCopiesOf, storageKeyOf } from '../../src/migration/kinds/storage-resume.js';
import { keepImage, STORAGE_DIR } from '../../src/migration/resume-store.js';
import { newVmId, parseVmSpec } from '../../src/vm/spec.js';
import type { FerryError } from '../../src/errors.js';
import type { PoolDef } from '../../src/storage/pools.js';

const MiB = 1024 * 1024;

test(
  "a retry to another path counts the kept cut copy's room as free; without that copy the pool is too small",
  { skip: process.getuid?.() !== 0 ? 'mounts a tmpfs: run as root' : false },
  async (t) => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-plan-'));
    const tiny = path.join(dir, 'tiny');
    await fsp.mkdir(tiny);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', tiny]);
    // One hook, in this order: the folder cannot go while the tmpfs is mounted in it.
    t.after(async () => {
      try {
        execFileSync('umount', ['-l', tiny]);
      } catch {
        /* gone */
      }
      await fsp.rm(dir, { recursive: true, force: true });
    });
    const pools: PoolDef[] = [
      { name: 'local', kind: 'local', path: path.join(dir, 'local') },
      { name: 'tiny', kind: 'local', path: tiny },
    ];
    const folder = path.join(dir, 'local', 'web1');
    await fsp.mkdir(folder, { recursive: true });
    const disk = path.join(folder, 'disk0.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '48M']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 36M', disk], { stdio: 'ignore' });
    const spec = parseVmSpec({
      name: 'web1',
      id: newVmId(),
      memoryMiB: 64,
      cpus: 1,
      disks: [{ id: 'disk0', path: disk, format: 'qcow2' }],
      boot: { kind: 'disk' },
      configPath: folder,
      checkpointPath: folder,
      pagingPath: folder,
    });
    // The cut copy of an earlier move to tiny/a, kept with its marker: 36 MiB of the 64.
    const data = path.join(dir, 'data');
    const kept = path.join(tiny, 'a', 'disk0.qcow2');
    await fsp.mkdir(path.dirname(kept));
    await fsp.copyFile(disk, kept);
    await keepImage(
      data,
      {
        moveKey: storageKeyOf(spec.id, 'h1'),
        vmId: spec.id,
        source: 'h1',
        diskId: 'disk0',
        path: kept,
        virtualSizeBytes: 48 * MiB,
        format: 'qcow2',
      },
      new Date(),
      STORAGE_DIR,
    );
    const at = { running: false, kept: keptCopyAt(data, spec.id), others: keptCopiesOf(data, spec.id) };
    const req = { vm: 'web1', priority: 'normal' as const, path: path.join(tiny, 'b'), resumable: 'always' as const };
    const plan = await storagePlan(pools, 'h1', spec, req, at);
    assert.equal(plan.disks.disk0, path.join(tiny, 'b', 'disk0.qcow2'), 'planned: the kept copy makes room');

    // Without the marker the file is someone else's: its room is not ours to count.
    await fsp.rm(path.join(data, STORAGE_DIR), { recursive: true, force: true });
    await assert.rejects(
      storagePlan(pools, 'h1', spec, req, { ...at, others: keptCopiesOf(data, spec.id) }),
      (e: FerryError) => e.code === 'E_DEST_SPACE' && /pool 'tiny' has \d+ MiB free/.test(e.message),
    );
  },
);
