// `ferry vm import`: a parsed libvirt domain (ImportPlan) becomes a Ferry VM on this host.
// Every disk is probed (format checked against the XML, backing chain inside pools, not in use
// by another QEMU), NICs are mapped to this host's switches by bridge or network name, and
// everything is checked before createVm writes a file. Disks are used in place (`vm rm` then
// keeps them) or, with `copy`, copied into the VM's folder as qcow2.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, InvalidInputError } from '../errors.js';
import type { SwitchView, VmImportBody } from '../api/schemas.js';
import { isImageFormat } from '../qemu/img.js';
import { ovmfPaths } from '../qemu/firmware.js';
import { assertInUsablePool, poolOf, type PoolDef } from '../storage/pools.js';
import { probeImage } from './image.js';
import type { CreateVmOptions } from './lifecycle.js';
import { resolveBootOrder, resolveMachine, VARS_DISK_ID, VARS_FILE } from './real-guest.js';
import { NAME_RE, newMac, newVmId, type CdromSpec, type DiskSpec, type VmSpecInput } from './spec.js';

export interface ImportContext {
  host: string;
  pools: PoolDef[];
  switches: SwitchView[];
  machineTypes: string[];
  signal?: AbortSignal;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MAC_RE = /^52:54:00(:[0-9a-f]{2}){3}$/;

export async function importedVm(
  body: VmImportBody,
  ctx: ImportContext,
): Promise<{ spec: VmSpecInput; create: CreateVmOptions; notes: string[] }> {
  const plan = body.plan;
  const name = body.name ?? plan.name;
  if (!NAME_RE.test(name))
    throw new InvalidInputError(
      `Cannot import domain '${plan.name}': it is not a valid Ferry VM name; give one with --name`,
      { name },
    );
  const notes = [...plan.unmapped];
  const local = ctx.pools.find((p) => p.kind === 'local');
  const folder = path.resolve(body.path ?? path.join(local?.path ?? '/', name));
  await assertInUsablePool(ctx.pools, ctx.host, folder, 'VM folder');

  let machine: string;
  try {
    machine = resolveMachine(plan.machine, ctx.machineTypes, ctx.host);
  } catch (err) {
    if (!/^pc-/.test(plan.machine)) throw err;
    machine = resolveMachine(plan.machine.startsWith('pc-q35-') ? 'q35' : 'pc', ctx.machineTypes, ctx.host);
    notes.push(`machine '${plan.machine}' is not supported here: it becomes '${machine}'`);
  }

  const disks: DiskSpec[] = [];
  const importDisks: NonNullable<CreateVmOptions['importDisks']> = {};
  const copyIn: Array<{ from: string; to: string }> = [];
  for (const [i, d] of plan.disks.entries()) {
    const id = `disk${i}`;
    const img = await probeImage(d.path, {
      pools: ctx.pools,
      host: ctx.host,
      what: `disk ${d.target}`,
      ...(ctx.signal ? { signal: ctx.signal } : {}),
    });
    const format = img.chain[0]?.format ?? '?';
    if (format !== d.format)
      throw new InvalidInputError(
        `Cannot import disk ${d.target} (${d.path}): the domain says it is ${d.format} but the image is ${format}; ` +
          'fix the <driver type> in the XML',
        { path: d.path },
      );
    const base = { id, bus: d.bus, readOnly: d.readOnly, cache: 'none' as const };
    if (body.copy) {
      const dest = path.join(folder, `${id}.qcow2`);
      const pool = await assertInUsablePool(ctx.pools, ctx.host, dest, `disk ${id}`);
      disks.push({ ...base, path: dest, format: 'qcow2', pool: pool.name });
      importDisks[id] = { image: img };
    } else {
      if (!isImageFormat(format))
        throw new InvalidInputError(
          `Cannot use disk ${d.target} (${d.path}) in place: Ferry runs qcow2, raw, vhdx and vpc, not ${format}; ` +
            'import with --copy to convert it to qcow2',
          { path: d.path },
        );
      const pool = poolOf(ctx.pools, d.path);
      disks.push({ ...base, path: path.resolve(d.path), format, external: true, ...(pool ? { pool: pool.name } : {}) });
    }
  }

  const cdroms: CdromSpec[] = [];
  for (const [i, c] of plan.cdroms.entries()) {
    const pool = await assertInUsablePool(ctx.pools, ctx.host, c.path, `CD-ROM ${c.target}`);
    if (!(await fsp.stat(c.path).catch(() => null))?.isFile())
      throw new FerryError(
        'E_FILE_NOT_FOUND',
        `Cannot import CD-ROM ${c.target}: ${c.path} is not a file; fix the path or eject it in libvirt first`,
        { context: { path: c.path } },
      );
    cdroms.push({ id: `cd${i}`, path: path.resolve(c.path), role: 'media', pool: pool.name });
  }

  if (plan.firmware === 'uefi') {
    const ovmf = ovmfPaths();
    const dest = path.join(folder, VARS_FILE);
    const pool = await assertInUsablePool(ctx.pools, ctx.host, dest, 'UEFI variable store');
    disks.push({
      id: VARS_DISK_ID,
      path: dest,
      format: 'raw',
      bus: 'virtio',
      readOnly: false,
      cache: 'none',
      pool: pool.name,
      role: 'uefi-vars',
    });
    copyIn.push({ from: await varsSource(plan.nvram, ovmf.vars, ctx, notes), to: VARS_FILE });
  }

  const nics = mapNics(plan.nics, ctx, notes, name);
  const ids: Record<string, string> = {};
  plan.disks.forEach((d, i) => (ids[d.target] = `disk${i}`));
  plan.cdroms.forEach((c, i) => (ids[c.target] = `cd${i}`));
  plan.nics.forEach((_, i) => (ids[`net${i}`] = `nic${i}`));
  const boot = plan.boot.map((b) => ids[b] ?? b).filter((b) => b !== '');
  const bootOrder = resolveBootOrder(boot.length ? boot : ['disk', 'cdrom'], { disks, cdroms, nics }, name);

  return {
    spec: {
      name,
      id: plan.uuid && UUID_RE.test(plan.uuid) ? plan.uuid.toLowerCase() : newVmId(),
      memoryMiB: plan.memoryMiB,
      cpus: plan.cpus,
      ...(plan.cpuModel ? { cpuModel: plan.cpuModel } : {}),
      machine,
      firmware: plan.firmware,
      disks,
      cdroms,
      nics,
      boot: { kind: 'disk' },
      bootOrder,
      display: plan.display,
      guest: 'custom',
      configPath: folder,
      checkpointPath: folder,
      pagingPath: folder,
    },
    create: { importDisks, copyIn },
    notes,
  };
}

/** The domain's own variable store when it fits this host's OVMF (same size), else a fresh one. */
async function varsSource(nvram: string | undefined, template: string, ctx: ImportContext, notes: string[]) {
  if (!nvram) {
    notes.push('no UEFI variable store in the domain: a fresh one is made (boot entries are found again)');
    return template;
  }
  const [st, tpl] = await Promise.all([fsp.stat(nvram).catch(() => null), fsp.stat(template)]);
  const pool = poolOf(ctx.pools, nvram);
  const why = !pool
    ? 'is outside every storage pool'
    : !st?.isFile()
      ? 'is missing'
      : st.size !== tpl.size
        ? `is ${st.size} bytes but this host's OVMF uses ${tpl.size}`
        : null;
  if (why) {
    notes.push(`UEFI variable store ${nvram} ${why}: a fresh one is made (boot entries are found again)`);
    return template;
  }
  return nvram;
}

function mapNics(
  nics: VmImportBody['plan']['nics'],
  ctx: ImportContext,
  notes: string[],
  vm: string,
): Array<{ id: string; switch: string; mac: string }> {
  const missing: string[] = [];
  const out = nics.map((n, i) => {
    const sw =
      n.kind === 'bridge'
        ? ctx.switches.find((s) => s.kind === 'bridge' && s.bridge === n.source)
        : n.kind === 'network'
          ? ctx.switches.find((s) => s.name === n.source)
          : ctx.switches.find((s) => s.kind === 'user');
    if (!sw)
      missing.push(
        n.kind === 'bridge'
          ? `bridge '${n.source ?? ''}' (create a switch on it: 'ferry switch new NAME --host ${ctx.host} ` +
              `--bridge ${n.source ?? 'BR'}')`
          : n.kind === 'network'
            ? `network '${n.source ?? ''}' (create a switch of that name on host '${ctx.host}')`
            : `user networking (create one: 'ferry switch new NAME --host ${ctx.host} --user')`,
      );
    let mac = n.mac ?? '';
    if (!MAC_RE.test(mac)) {
      const fresh = newMac();
      if (n.mac) notes.push(`NIC ${n.mac} gets MAC ${fresh}: Ferry uses 52:54:00:xx:xx:xx addresses`);
      mac = fresh;
    }
    return { id: `nic${i}`, switch: sw?.name ?? '', mac };
  });
  if (missing.length)
    throw new FerryError(
      'E_SWITCH_NOT_FOUND',
      `Cannot import VM '${vm}': host '${ctx.host}' has no switch for ${missing.join('; ')}`,
      { context: { missing } },
    );
  return out;
}
