// Where the CLI last saw each VM (issue 17: a quiet control plane). A command about one VM
// asks that host first and every host only when the VM is not there (or the host does not
// answer): locating a VM no longer costs a connection and a `vm list` per host. Only a hint:
// a wrong or missing entry costs one more request, never a wrong answer. Kept beside the
// context (a lab's folder, or next to the context file); unreadable or unwritable is no error.
import fs from 'node:fs';
import path from 'node:path';
import { writeSmallFileAtomicSync } from '../util/atomic-file.js';

/** Entries kept (the most recent ones): the file stays small. */
const MAX_ENTRIES = 1000;

/** The hints' file of a context: `<lab>/vm-hosts.json`, or `<context file>.vm-hosts.json`. */
export function vmHostsFile(ctx: { source: string; file?: string }): string {
  return ctx.file ? ctx.file.replace(/(\.json)?$/, '.vm-hosts.json') : path.join(ctx.source, 'vm-hosts.json');
}

export class VmHosts {
  private map: Map<string, string> | null = null;
  private dirty = false;

  constructor(readonly file: string) {}

  private load(): Map<string, string> {
    if (this.map) return this.map;
    this.map = new Map();
    try {
      const raw = JSON.parse(fs.readFileSync(this.file, 'utf8')) as unknown;
      if (raw && typeof raw === 'object' && !Array.isArray(raw))
        for (const [vm, host] of Object.entries(raw)) if (typeof host === 'string') this.map.set(vm, host);
    } catch {
      /* no hints yet, or a damaged file: every host is asked, and the file is written anew */
    }
    return this.map;
  }

  /** The host VM was last seen on, if any. */
  get(vm: string): string | undefined {
    return this.load().get(vm);
  }

  /** VM is on HOST now (null: it is gone). Written by `save`. */
  set(vm: string, host: string | null): void {
    const m = this.load();
    if ((m.get(vm) ?? null) === host) return;
    m.delete(vm); // re-inserted last: the newest entries survive the cap
    if (host !== null) m.set(vm, host);
    this.dirty = true;
  }

  /** Writes the hints if they changed; failures are ignored (a hint is not worth an error). */
  save(): void {
    if (!this.dirty || !this.map) return;
    this.dirty = false;
    const entries = [...this.map].slice(-MAX_ENTRIES);
    try {
      writeSmallFileAtomicSync(this.file, JSON.stringify(Object.fromEntries(entries)) + '\n', 0o600);
    } catch {
      /* a read-only context folder: the next command asks every host, as before */
    }
  }
}
