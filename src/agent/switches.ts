// This host's virtual switches (Hyper-V's virtual switch: a named network a VM's NIC plugs
// into): `user` networking or a Linux bridge. A VM's NICs become real here when its QEMU
// starts: a tap device on the bridge for each NIC on a bridge switch, removed after.
import { FerryError, NotFoundError } from '../errors.js';
import type { SwitchBackend } from '../qemu/argv.js';
import { bridgeExists, createTap, deleteTap, tapName } from '../vm/network.js';
import { loadVm } from '../vm/folder.js';
import type { VmSpec } from '../vm/spec.js';
import type { Emit } from '../api/events.js';
import type { SwitchView } from '../api/schemas.js';
import type { Registry } from './registry.js';

export type NicResolver = (nicId: string, switchName: string) => SwitchBackend;

export class Switches {
  constructor(
    private readonly host: string,
    private readonly registry: Registry,
    private readonly emit: Emit,
  ) {}

  /** Creates the configured switches this host does not have yet. */
  init(defs: readonly SwitchView[]): void {
    const have = new Set(this.list().map((s) => s.name));
    for (const s of defs) if (!have.has(s.name)) this.registry.addSwitch(s);
  }

  list(): SwitchView[] {
    return this.registry.listSwitches();
  }

  /** The switch, or E_SWITCH_NOT_FOUND. */
  get(name: string): SwitchView {
    const s = this.list().find((x) => x.name === name);
    if (!s)
      throw new NotFoundError(
        'E_SWITCH_NOT_FOUND',
        `Cannot find switch '${name}' on host '${this.host}'; ` +
          `create it with 'ferry switch new ${name} --host ${this.host} --user'`,
        { switch: name },
      );
    return s;
  }

  async create(s: { name: string; kind: 'user' | 'bridge'; bridge?: string | undefined }): Promise<SwitchView> {
    if (s.kind === 'bridge' && (s.bridge === undefined || !(await bridgeExists(s.bridge)))) {
      const bridge = s.bridge ?? '';
      throw new FerryError(
        'E_BRIDGE_NOT_FOUND',
        `Cannot create switch '${s.name}' on host '${this.host}': there is no Linux bridge '${bridge}'; ` +
          `create it first (ip link add ${bridge} type bridge) or use --user`,
        { context: { bridge } },
      );
    }
    if (this.list().some((x) => x.name === s.name)) {
      throw new FerryError(
        'E_SWITCH_EXISTS',
        `Cannot create switch '${s.name}' on host '${this.host}': it already exists; choose another name`,
        { context: { switch: s.name } },
      );
    }
    const view: SwitchView = { name: s.name, kind: s.kind, bridge: s.bridge ?? null };
    this.registry.addSwitch(view);
    this.emit('switch.created', { switch: s.name });
    return view;
  }

  async remove(name: string): Promise<void> {
    this.get(name);
    for (const rec of this.registry.listVms()) {
      const spec = await loadVm(rec.configPath).catch(() => null);
      if (spec?.nics.some((n) => n.switch === name)) {
        throw new FerryError(
          'E_SWITCH_IN_USE',
          `Cannot remove switch '${name}' from host '${this.host}': VM '${rec.name}' is connected to it; ` +
            'remove the VM or its NIC first',
          { context: { switch: name, vm: rec.name } },
        );
      }
    }
    this.registry.removeSwitch(name);
    this.emit('switch.removed', { switch: name });
  }

  /**
   * Makes each NIC's switch real on this host (a tap on the bridge for bridge switches) and
   * returns the resolver QEMU's command line is built with. On failure nothing is left.
   */
  async attach(spec: VmSpec): Promise<NicResolver> {
    const backends = new Map<string, SwitchBackend>();
    try {
      for (const [i, nic] of spec.nics.entries()) {
        const s = this.get(nic.switch);
        if (s.kind === 'user') {
          backends.set(nic.id, { kind: 'user' });
          continue;
        }
        const bridge = this.bridgeOf(s);
        const tap = tapName(spec.id, this.host, i);
        await createTap(tap, bridge);
        backends.set(nic.id, { kind: 'bridge', bridge, tap });
      }
    } catch (err) {
      await this.detach(spec);
      throw err;
    }
    return (nicId) => backends.get(nicId) ?? { kind: 'user' };
  }

  /** Removes the VM's taps (after its QEMU exited). */
  async detach(spec: VmSpec): Promise<void> {
    for (const [i, nic] of spec.nics.entries()) {
      const s = this.list().find((x) => x.name === nic.switch);
      if (s?.kind === 'bridge') await deleteTap(tapName(spec.id, this.host, i));
    }
  }

  private bridgeOf(s: SwitchView): string {
    if (s.bridge === null)
      throw new FerryError(
        'E_BRIDGE_NOT_FOUND',
        `Cannot connect to switch '${s.name}' on host '${this.host}': it names no Linux bridge; ` +
          `remove it and create it again with --bridge`,
        { context: { switch: s.name } },
      );
    return s.bridge;
  }
}
