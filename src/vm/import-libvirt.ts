// libvirt domain XML → an import plan (pure: no files, no host). The plan says what Ferry will
// make of the domain (memory, vCPUs, CPU model, machine, firmware, disks with their formats,
// CD-ROMs, NICs by bridge, serial and screen) and lists every element it does not carry over,
// so the user sees what changes before anything is registered. A domain Ferry cannot run
// (not x86_64 HVM, direct kernel boot, a disk that is not a file) is refused with the reason.
// The plan's schema (ImportPlan) lives with the API's: it is the body of the vm.import action.
import { XMLParser } from 'fast-xml-parser';
import { SyntaxValidator } from 'fast-xml-validator';
import { ImportPlan } from '../api/schemas.js';
import { InvalidInputError } from '../errors.js';

/** A domain XML larger than this is not a domain definition. */
export const MAX_DOMAIN_XML_BYTES = 1024 * 1024;
export { ImportPlan };

type Node = Record<string, unknown>;

const ARRAYS = new Set(['disk', 'interface', 'boot', 'serial', 'console', 'graphics', 'video', 'feature']);

/** Parses a libvirt domain XML; throws InvalidInputError naming what is wrong. */
export function parseLibvirtDomain(xml: string): ImportPlan {
  if (Buffer.byteLength(xml) > MAX_DOMAIN_XML_BYTES)
    throw bad(`it is larger than ${MAX_DOMAIN_XML_BYTES} bytes`, "give the output of 'virsh dumpxml DOMAIN'");
  if (/<!DOCTYPE|<!ENTITY/i.test(xml))
    throw bad('it has a DOCTYPE or entity declarations, which libvirt never writes', 'remove them');
  try {
    SyntaxValidator.validate(xml);
  } catch (err) {
    const e = err as { message?: string; line?: number };
    throw bad(`it is not well-formed XML (line ${e.line ?? '?'}: ${e.message ?? String(err)})`, 'fix the file');
  }
  const doc = new XMLParser({
    ignoreAttributes: false,
    attributeNamePrefix: '@',
    parseTagValue: false,
    parseAttributeValue: false,
    processEntities: true,
    isArray: (name) => ARRAYS.has(name),
  }).parse(xml) as Node;
  const dom = obj(doc.domain);
  if (!dom) throw bad('its root element is not <domain>', "give the output of 'virsh dumpxml DOMAIN'");
  const unmapped: string[] = [];
  const skip = (what: string): void => void unmapped.push(what);

  const name = text(dom.name);
  if (!name) throw bad('the domain has no <name>', 'add one');
  const os = obj(dom.os) ?? {};
  const type = obj(os.type) ?? { '#text': text(os.type) };
  const arch = attr(type, 'arch') ?? 'x86_64';
  if (arch !== 'x86_64' || (text(type) ?? 'hvm') !== 'hvm')
    throw bad(`domain '${name}' is ${arch} ${text(type) ?? ''}; Ferry runs x86_64 HVM guests`, 'import another');
  if (os.kernel !== undefined)
    throw bad(`domain '${name}' boots a kernel directly (<os><kernel>)`, "create it with 'ferry vm new --kernel'");
  const machine = mapMachine(attr(type, 'machine'), skip);

  const loader = obj(os.loader) ?? (text(os.loader) ? { '#text': text(os.loader) } : null);
  const efi =
    attr(os, 'firmware') === 'efi' ||
    (loader !== null && (attr(loader, 'type') === 'pflash' || /ovmf|edk2/i.test(text(loader) ?? '')));
  if (loader && text(loader)) skip(`firmware loader ${text(loader) ?? ''}: Ferry uses this host's OVMF_CODE_4M.fd`);
  if (loader && attr(loader, 'secure') === 'yes') skip('secure boot (loader secure=yes): Ferry boots without it');
  const nvram = text(os.nvram) ?? attr(obj(os.nvram) ?? {}, 'template');

  const memoryMiB = Math.floor(bytesOf(dom.currentMemory ?? dom.memory, name) / 1048576);
  const cpus = Number(text(dom.vcpu) ?? '1');
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 255) throw bad(`<vcpu> is '${text(dom.vcpu) ?? ''}'`, 'fix it');
  const cpuModel = mapCpu(obj(dom.cpu), skip);

  const devices = obj(dom.devices) ?? {};
  const disks: ImportPlan['disks'] = [];
  const cdroms: ImportPlan['cdroms'] = [];
  const bootOrdered: Array<{ order: number; dev: string }> = [];
  for (const d of arr(devices.disk)) {
    const device = attr(d, 'device') ?? 'disk';
    const target = obj(d.target) ?? {};
    const dev = attr(target, 'dev') ?? '?';
    const src = obj(d.source) ?? {};
    const file = attr(src, 'file');
    const order = Number(attr(arr(d.boot)[0] ?? {}, 'order'));
    if (device === 'floppy') {
      skip(`floppy ${dev}`);
      continue;
    }
    if (attr(d, 'type') !== 'file' || (!file && device === 'disk'))
      throw bad(
        `disk ${dev} is a ${attr(d, 'type') ?? '?'} source, not a file`,
        'convert it into an image file (qemu-img convert) and point the domain at it',
      );
    if (order) bootOrdered.push({ order, dev });
    if (device === 'cdrom') {
      if (file) cdroms.push({ target: dev, path: file });
      else skip(`empty CD-ROM drive ${dev} (no medium): not created`);
      continue;
    }
    if (device !== 'disk') throw bad(`device ${dev} is a '${device}'`, 'remove it from the domain');
    const bus = attr(target, 'bus') ?? 'virtio';
    const mapped = bus === 'virtio' ? 'virtio' : bus === 'ide' || bus === 'sata' ? 'ide' : null;
    if (!mapped) skip(`disk ${dev} on bus '${bus}' becomes virtio-blk (the guest needs virtio drivers)`);
    if (d.shareable !== undefined) skip(`disk ${dev} is shareable: Ferry opens it for this VM only`);
    const driver = obj(d.driver) ?? {};
    disks.push({
      target: dev,
      path: file ?? '',
      format: attr(driver, 'type') ?? 'raw',
      bus: mapped ?? 'virtio',
      readOnly: d.readonly !== undefined,
    });
  }
  if (disks.length + cdroms.length === 0) throw bad(`domain '${name}' has no disk or CD-ROM`, 'add one');
  if (cdroms.length > 3) throw bad(`domain '${name}' has ${cdroms.length} CD-ROMs`, 'keep at most 3');

  const nics: ImportPlan['nics'] = [];
  for (const n of arr(devices.interface)) {
    const kind = attr(n, 'type') ?? '?';
    const src = obj(n.source) ?? {};
    const mac = attr(obj(n.mac) ?? {}, 'address')?.toLowerCase();
    const model = attr(obj(n.model) ?? {}, 'type') ?? 'default';
    if (model !== 'virtio') skip(`NIC ${mac ?? ''} model '${model}' becomes virtio-net`);
    const order = Number(attr(arr(n.boot)[0] ?? {}, 'order'));
    if (order) bootOrdered.push({ order, dev: `net${nics.length}` });
    if (kind === 'bridge') nics.push({ kind: 'bridge', source: attr(src, 'bridge') ?? '', ...(mac ? { mac } : {}) });
    else if (kind === 'network')
      nics.push({ kind: 'network', source: attr(src, 'network') ?? '', ...(mac ? { mac } : {}) });
    else if (kind === 'user') nics.push({ kind: 'user', ...(mac ? { mac } : {}) });
    else throw bad(`NIC ${mac ?? ''} is of type '${kind}'`, 'use a bridge, network or user interface, or remove it');
  }

  const boot = bootOrdered.length
    ? bootOrdered.sort((a, b) => a.order - b.order).map((b) => b.dev)
    : arr(os.boot).map((b) => ({ hd: 'disk', cdrom: 'cdrom', network: 'net', fd: 'fd' })[attr(b, 'dev') ?? ''] ?? '');
  if (boot.includes('fd') || boot.includes('')) skip('boot from floppy or an unknown device: dropped');

  const graphics = arr(devices.graphics);
  for (const g of graphics) {
    const t = attr(g, 'type') ?? '?';
    if (t !== 'vnc') skip(`graphics '${t}': Ferry shows the screen over VNC instead`);
    else if (attr(g, 'port') || attr(g, 'listen'))
      skip('VNC port and listen address: Ferry serves VNC on a Unix socket');
  }
  for (const v of arr(devices.video)) {
    const t = attr(obj(v.model) ?? {}, 'type') ?? 'vga';
    if (t !== 'vga') skip(`video '${t}' becomes a standard VGA card`);
  }
  for (const s of arr(devices.serial)) {
    const t = attr(s, 'type') ?? 'pty';
    if (t !== 'pty') skip(`serial port of type '${t}': Ferry's is a Unix socket with a log (ferry vm console)`);
  }
  if (arr(devices.serial).length > 1) skip('serial ports after the first');
  const known = new Set(['emulator', 'disk', 'interface', 'graphics', 'video', 'serial', 'console', 'controller']);
  for (const [k, v] of Object.entries(devices)) {
    if (known.has(k) || k.startsWith('@')) continue;
    skip(`${Array.isArray(v) ? v.length : 1} <${k}> device(s)`);
  }
  for (const k of ['memoryBacking', 'numatune', 'cputune', 'iothreads', 'blkiotune', 'sysinfo', 'seclabel']) {
    if (dom[k] !== undefined) skip(`<${k}>`);
  }
  const offset = attr(obj(dom.clock) ?? {}, 'offset');
  if (offset && offset !== 'utc') skip(`clock offset '${offset}': Ferry's guest clock is UTC`);
  const features = obj(dom.features) ?? {};
  for (const k of Object.keys(features)) if (!['acpi', 'apic', 'pae', 'vmport'].includes(k)) skip(`feature <${k}>`);

  const uuid = text(dom.uuid);
  return ImportPlan.parse({
    name,
    ...(uuid ? { uuid } : {}),
    memoryMiB,
    cpus,
    ...(cpuModel ? { cpuModel } : {}),
    machine,
    firmware: efi ? 'uefi' : 'bios',
    ...(efi && nvram ? { nvram } : {}),
    disks,
    cdroms,
    nics,
    boot: boot.filter((b) => b && b !== 'fd'),
    display: graphics.length ? 'vga' : 'none',
    unmapped: unmapped.slice(0, 200),
  });
}

function mapMachine(m: string | undefined, skip: (s: string) => void): string {
  if (!m || m === 'pc' || /^pc-i440fx-\d+\.\d+$/.test(m) || m === 'q35' || /^pc-q35-\d+\.\d+$/.test(m))
    return m ?? 'pc';
  const q35 = /q35/.test(m);
  skip(`machine '${m}' becomes ${q35 ? 'q35' : 'pc'}`);
  return q35 ? 'q35' : 'pc';
}

function mapCpu(cpu: Node | null, skip: (s: string) => void): string | undefined {
  if (!cpu) return undefined;
  const mode = attr(cpu, 'mode') ?? 'custom';
  if (mode === 'host-passthrough' || mode === 'host-model') {
    skip(`CPU mode '${mode}' becomes Ferry's default model (choose one with --cpu when you create a VM)`);
    return undefined;
  }
  const model = text(cpu.model);
  if (cpu.feature !== undefined) skip(`${arr(cpu.feature).length} CPU feature setting(s)`);
  if (cpu.topology !== undefined) skip('CPU topology (sockets, cores, threads): Ferry gives the vCPUs as sockets');
  if (model && !/^[A-Za-z0-9._-]{1,64}$/.test(model)) {
    skip(`CPU model '${model}'`);
    return undefined;
  }
  return model;
}

const UNITS: Record<string, number> = {
  b: 1,
  bytes: 1,
  kb: 1000,
  k: 1024,
  kib: 1024,
  mb: 1e6,
  m: 1048576,
  mib: 1048576,
  gb: 1e9,
  g: 1073741824,
  gib: 1073741824,
  tb: 1e12,
  t: 1099511627776,
  tib: 1099511627776,
};

function bytesOf(v: unknown, name: string): number {
  const n = obj(v) ?? { '#text': text(v) };
  const value = Number(text(n));
  const unit = UNITS[(attr(n, 'unit') ?? 'KiB').toLowerCase()];
  if (!Number.isFinite(value) || value <= 0 || unit === undefined)
    throw bad(
      `domain '${name}' has no valid <memory>`,
      "give it as libvirt does, e.g. <memory unit='KiB'>1048576</memory>",
    );
  return value * unit;
}

function obj(v: unknown): Node | null {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Node) : null;
}
function arr(v: unknown): Node[] {
  return (Array.isArray(v) ? v : v === undefined ? [] : [v]).flatMap((x) => (obj(x) ? [x as Node] : []));
}
function text(v: unknown): string | undefined {
  if (typeof v === 'string') return v.trim() || undefined;
  const o = obj(v);
  return typeof o?.['#text'] === 'string' ? o['#text'].trim() || undefined : undefined;
}
function attr(n: Node, name: string): string | undefined {
  const v = n[`@${name}`];
  return typeof v === 'string' ? v : undefined;
}
function bad(what: string, fix: string): InvalidInputError {
  return new InvalidInputError(`Cannot import the libvirt domain: ${what}; ${fix}`, {});
}
