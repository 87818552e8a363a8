// The VM's folder on disk: vm.json is the VM's config and moves with the VM.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError, NotFoundError, messageOf } from '../errors.js';
import { parseVmSpec, type VmSpec } from './spec.js';
import { writeFileAtomic } from '../util/atomic-file.js';

export const CONFIG_FILE = 'vm.json';

export function configFile(configPath: string): string {
  return path.join(configPath, CONFIG_FILE);
}

export async function loadVm(configPath: string): Promise<VmSpec> {
  const file = configFile(configPath);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new NotFoundError(
        'E_VM_NOT_FOUND',
        `Cannot load VM from ${configPath}: there is no ${CONFIG_FILE}; check the path`,
        { configPath },
      );
    }
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new FerryError(
      'E_VM_CONFIG_CORRUPT',
      `Cannot load VM from ${file}: not valid JSON (${messageOf(err)}); restore it from a backup`,
      { context: { file }, cause: err },
    );
  }
  return parseVmSpec(json, `load VM config ${file}`);
}

/** Atomic replace, so a crash never leaves a half-written config. */
export async function saveVm(spec: VmSpec): Promise<void> {
  const file = configFile(spec.configPath);
  await writeFileAtomic(file, JSON.stringify(spec, null, 2) + '\n', { sync: true });
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fsp.access(p);
    return true;
  } catch {
    return false;
  }
}
