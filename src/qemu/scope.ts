// Every QEMU in its own systemd scope under machine.slice (as libvirt registers machines)
// when systemd is PID 1: the agent's unit then holds no QEMU in its cgroup, so stopping,
// restarting or upgrading the agent never touches a VM. `systemd-run --scope` asks systemd
// for the scope, moves itself into it and execs QEMU, so the pid the agent spawned is QEMU's.
// Without systemd (labs, CI containers) QEMU is spawned detached, as before.
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';

export const SCOPE_SLICE = 'machine.slice';

/** sd_booted(): systemd is the init system (it creates this folder at boot). */
export function systemdIsInit(): boolean {
  try {
    return fs.lstatSync('/run/systemd/system').isDirectory();
  } catch {
    return false;
  }
}

/** A unique scope name per QEMU start: ferry-vm-<vm>-<random>.scope (VM names are valid unit-name characters). */
export function scopeUnitName(vm: string): string {
  return `ferry-vm-${vm}-${randomBytes(3).toString('hex')}.scope`;
}

export interface LaunchCommand {
  file: string;
  args: string[];
  /** The transient scope QEMU runs in, or null when spawned directly. */
  scope: string | null;
}

/**
 * The command that starts `qemu argv`: wrapped in a scope under machine.slice, or as is.
 * The agent runs at a lower CPU priority than its guests (Nice= in its unit, `nice` in a lab)
 * and a child inherits its nice level, so QEMU is put back to 0: `--nice=0` in a scope, else
 * `nice -n -N` when the caller may raise a priority (`agentNice`: the caller's level, as root).
 */
export function qemuLaunchCommand(
  qemu: string,
  argv: readonly string[],
  o: { vm: string; useScope: boolean; unit?: string; agentNice?: number; runAs?: readonly string[] },
): LaunchCommand {
  // `runAs` (setpriv …) becomes QEMU's user last, after the scope and the priority are set.
  const [file = qemu, ...rest] = [...(o.runAs ?? []), qemu, ...argv];
  if (!o.useScope)
    return o.agentNice
      ? { file: 'nice', args: ['-n', String(-o.agentNice), '--', file, ...rest], scope: null }
      : { file, args: rest, scope: null };
  const unit = o.unit ?? scopeUnitName(o.vm);
  return {
    file: 'systemd-run',
    args: [
      '--scope',
      '--quiet',
      // Forget the scope once QEMU is gone, also after a failure (no stale units pile up).
      '--collect',
      `--slice=${SCOPE_SLICE}`,
      `--unit=${unit}`,
      `--description=Ferry VM ${o.vm}`,
      '--nice=0',
      '--',
      file,
      ...rest,
    ],
    scope: unit,
  };
}

/** Scopes only as root with systemd as init: an unprivileged caller may not create system units. */
export function useScopes(): boolean {
  return process.getuid?.() === 0 && systemdIsInit();
}
