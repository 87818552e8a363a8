// `ferry vm set VM --cpu compat|host|MODEL`: processor compatibility switched on (a named
// baseline model; the CLI resolves 'compat' to the newest model every host of the context can
// give) or off ('host': the host's own CPU, which only KVM provides and which pins the VM to
// identical hosts) for a stopped VM. Pure: the agent passes what its QEMU answered to
// query-cpu-definitions (asked once per process, src/qemu/cpu-models.ts).
import { FerryError, InvalidInputError } from '../errors.js';
import type { CpuModelInfo } from '../qemu/cpu-models.js';

/** What a VM's CPU model is checked against: this host's accelerator and QEMU's models under it. */
export interface CpuContext {
  accel: 'kvm' | 'tcg';
  models: readonly CpuModelInfo[];
}

const MODEL = /^[A-Za-z0-9._-]{1,64}$/;

/** The model to store for `asked` (QEMU's own spelling), or a clear refusal. */
export function resolveCpuModel(vm: string, asked: string, ctx: CpuContext): string {
  const what = `set the CPU model of VM '${vm}' to '${asked}'`;
  if (!MODEL.test(asked))
    throw new InvalidInputError(`Cannot ${what}: a model name is letters, digits, dot, dash or underscore`, { vm });
  if (asked === 'compat')
    throw new InvalidInputError(
      `Cannot ${what}: 'compat' is resolved by the CLI across the hosts of the context; ` +
        "use 'ferry vm set' (it sends the model it chose)",
      { vm },
    );
  if (asked === 'host') {
    if (ctx.accel !== 'kvm')
      throw new InvalidInputError(
        `Cannot ${what}: 'host' passes the host's own CPU through and needs KVM, but this host runs QEMU ` +
          `under ${ctx.accel}; choose a named model ('ferry compare-vm' and 'ferry host show' list them) or 'compat'`,
        { vm },
      );
    return 'host';
  }
  const lower = asked.toLowerCase();
  const found =
    ctx.models.find((m) => m.name === asked) ?? ctx.models.find((m) => m.name.toLowerCase() === lower) ?? null;
  const usable = ctx.models.filter((m) => m.unavailableFeatures.length === 0).map((m) => m.name);
  if (!found)
    throw new InvalidInputError(
      `Cannot ${what}: this host's QEMU knows no such CPU model; usable here under ${ctx.accel}: ` +
        `${usable.slice(0, 24).join(', ')}${usable.length > 24 ? ', …' : ''}`,
      { vm },
    );
  if (found.unavailableFeatures.length)
    throw new InvalidInputError(
      `Cannot ${what}: QEMU cannot give this model under ${ctx.accel} here (it lacks ` +
        `${found.unavailableFeatures.slice(0, 6).join(', ')}${found.unavailableFeatures.length > 6 ? ', …' : ''}); ` +
        "choose an older model or 'compat'",
      { vm },
    );
  return found.name;
}

/** A running (or paused, or moving) VM keeps its CPU model: QEMU cannot change it under a guest. */
export function assertStoppedForCpu(vm: string, running: boolean): void {
  if (running)
    throw new FerryError(
      'E_VM_RUNNING',
      `Cannot change the CPU model of VM '${vm}': it is running, and a guest's CPU cannot change under it; ` +
        `stop it first ('ferry vm stop ${vm}'), then run 'ferry vm set' again`,
      { context: { vm } },
    );
}
