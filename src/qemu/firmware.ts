// UEFI firmware: Debian's OVMF (package ovmf), 4 MiB flash layout. The code image is shared and
// read-only; each VM gets its own copy of the variable store (boot entries, settings), which is
// a VM file like a disk: it must be the same file on both sides of a move.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, InvalidInputError } from '../errors.js';

export interface OvmfPaths {
  /** Firmware code, mapped read-only as pflash unit 0. */
  code: string;
  /** Template of the variable store; copy it per VM (createVarsFile) for pflash unit 1. */
  vars: string;
}

/** Node names of the two flash devices in the argv of pflashArgs. */
export const PFLASH_NODES = { code: 'ovmf-code', vars: 'ovmf-vars' } as const;

/** Debian's OVMF files (FERRY_OVMF_DIR overrides /usr/share/OVMF); throws when they are missing. */
export function ovmfPaths(): OvmfPaths {
  const dir = process.env.FERRY_OVMF_DIR ?? '/usr/share/OVMF';
  const p = { code: path.join(dir, 'OVMF_CODE_4M.fd'), vars: path.join(dir, 'OVMF_VARS_4M.fd') };
  for (const f of [p.code, p.vars]) {
    if (!fs.existsSync(f)) {
      throw new FerryError(
        'E_FIRMWARE_MISSING',
        `Cannot use UEFI firmware: ${f} does not exist; install Debian's ovmf package (scripts/setup does)`,
        { context: { file: f } },
      );
    }
  }
  return p;
}

/** Copies the OVMF variable-store template to `dest` (a new file; an existing one is never replaced). */
export async function createVarsFile(dest: string, opts: { signal?: AbortSignal } = {}): Promise<string> {
  opts.signal?.throwIfAborted();
  const { vars } = ovmfPaths();
  try {
    await fsp.copyFile(vars, dest, fs.constants.COPYFILE_EXCL);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      throw new InvalidInputError(
        `Cannot create the UEFI variable store ${dest}: the file exists and holds a VM's settings; ` +
          'remove it first if it is unused',
        { file: dest },
      );
    }
    throw new FerryError(
      'E_FIRMWARE_VARS',
      `Cannot create the UEFI variable store ${dest}: ${code ?? String(err)}; check the folder`,
      {
        context: { file: dest },
        cause: err,
      },
    );
  }
  await fsp.chmod(dest, 0o600);
  return dest;
}

/**
 * QEMU arguments for OVMF as two pflash block nodes: `blockdevs` go on the command line and
 * `machineProps` are appended to -machine (e.g. `pc-q35-7.2,pflash0=ovmf-code,pflash1=ovmf-vars`).
 * `varsNode` names the store's nodes (`<name>-file`, `<name>`) as a VM's disk id names a disk's,
 * so moves find, export and mirror it by that id; `direct` bypasses the host page cache.
 */
export function pflashArgs(
  varsFile: string,
  paths: OvmfPaths = ovmfPaths(),
  opts: { varsNode?: string; direct?: boolean } = {},
): { blockdevs: string[]; machineProps: string[] } {
  const node = (name: string, filename: string, readOnly: boolean, cache?: object): string[] => [
    '-blockdev',
    JSON.stringify({
      driver: 'file',
      filename,
      'node-name': `${name}-file`,
      'read-only': readOnly,
      ...(cache ? { cache } : {}),
    }),
    '-blockdev',
    JSON.stringify({
      driver: 'raw',
      file: `${name}-file`,
      'node-name': name,
      'read-only': readOnly,
      ...(cache ? { cache } : {}),
    }),
  ];
  const vars = opts.varsNode ?? PFLASH_NODES.vars;
  const cache = opts.direct === undefined ? undefined : { direct: opts.direct, 'no-flush': false };
  return {
    blockdevs: [...node(PFLASH_NODES.code, paths.code, true), ...node(vars, varsFile, false, cache)],
    machineProps: [`pflash0=${PFLASH_NODES.code}`, `pflash1=${vars}`],
  };
}

/** Size of the variable store template (a VM's store must keep exactly this size). */
export async function varsTemplateSize(): Promise<number> {
  return (await fsp.stat(ovmfPaths().vars)).size;
}
