// Flag value parsers: a bad value is a usage error (exit 2) that says what is wrong and
// what to write instead.
import { InvalidArgumentError } from '@commander-js/extra-typings';
import { IMAGE_FORMATS, isImageFormat } from '../qemu/img.js';
import { NAME_RE } from '../api/common.js';

const UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** "256M", "1G", "1.5G", "512KiB" → bytes; `bareUnit` is the unit of a plain number. */
export function parseSize(s: string, bareUnit: 'B' | 'M' = 'B'): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(s.trim());
  if (!m) return null;
  const unit = (m[2] ?? '').toUpperCase() || (bareUnit === 'M' ? 'M' : '');
  const factor = UNITS[unit];
  if (factor === undefined) return null;
  const v = Math.round(Number(m[1]) * factor);
  return Number.isSafeInteger(v) && v > 0 ? v : null;
}

export function memoryMiB(flag: string) {
  return (s: string): number => {
    const b = parseSize(s, 'M');
    if (b === null || b % (1024 * 1024) !== 0)
      throw new InvalidArgumentError(`Cannot use ${flag} '${s}': not a size in whole MiB; write it like 256M or 2G`);
    return b / (1024 * 1024);
  };
}

export function positiveInt(flag: string, max = 1 << 20) {
  return (s: string): number => {
    const n = Number(s);
    if (!/^\d+$/.test(s) || !Number.isSafeInteger(n) || n < 1 || n > max)
      throw new InvalidArgumentError(`Cannot use ${flag} '${s}': give a whole number from 1 to ${max}`);
    return n;
  };
}

/** An on|off flag's parser, naming the flag in its error. */
export function onOff(flag: string) {
  return (s: string): boolean => {
    if (s === 'on') return true;
    if (s === 'off') return false;
    throw new InvalidArgumentError(`Cannot use ${flag} '${s}': write on or off`);
  };
}

export function nonNegativeInt(flag: string, max = 1 << 20) {
  return (s: string): number => {
    const n = Number(s);
    if (!/^\d+$/.test(s) || n > max)
      throw new InvalidArgumentError(`Cannot use ${flag} '${s}': give a whole number from 0 to ${max}`);
    return n;
  };
}

export function name(flag: string) {
  return (s: string): string => {
    if (!NAME_RE.test(s))
      throw new InvalidArgumentError(
        `Cannot use ${flag} '${s}': names are 1–63 letters, digits, dot, dash or underscore, starting ` +
          'with a letter or digit',
      );
    return s;
  };
}

export interface DiskFlag {
  sizeBytes: number;
  format?: (typeof IMAGE_FORMATS)[number];
  pool?: string;
}

/** --disk SIZE[,format=F][,pool=P] */
export function diskFlag(s: string, prev: DiskFlag[] = []): DiskFlag[] {
  const [size, ...opts] = s.split(',');
  const bytes = parseSize(size ?? '');
  if (bytes === null || bytes % 512 !== 0)
    throw new InvalidArgumentError(
      `Cannot use --disk '${s}': '${size}' is not a size (a multiple of 512 bytes); write it like 64M ` +
        'or 10G[,format=qcow2][,pool=shared]',
    );
  const d: DiskFlag = { sizeBytes: bytes };
  for (const o of opts) {
    const [k, v] = o.split('=');
    if (k === 'format' && v && isImageFormat(v)) d.format = v;
    else if (k === 'pool' && v && NAME_RE.test(v)) d.pool = v;
    else
      throw new InvalidArgumentError(
        `Cannot use --disk '${s}': '${o}' is not understood; options are format=${IMAGE_FORMATS.join('|')} ` +
          'and pool=NAME',
      );
  }
  return [...prev, d];
}

export function collect(s: string, prev: string[] = []): string[] {
  return [...prev, s];
}

/** --probe-dirty MIB[@MIBPS] */
export function dirtyFlag(s: string): { mib: number; mibps?: number } {
  const m = /^(\d+)(?:@(\d+))?$/.exec(s);
  if (!m || Number(m[1]) < 1)
    throw new InvalidArgumentError(`Cannot use --probe-dirty '${s}': write MIB or MIB@MIBPS, such as 64 or 64@16`);
  return { mib: Number(m[1]), ...(m[2] ? { mibps: Number(m[2]) } : {}) };
}

/** A size in bytes, a multiple of 512: "20G", "512M". */
export function sizeFlag(flag: string) {
  return (s: string): number => {
    const b = parseSize(s);
    if (b === null || b % 512 !== 0)
      throw new InvalidArgumentError(
        `Cannot use ${flag} '${s}': not a size (a multiple of 512 bytes); write it like 20G`,
      );
    return b;
  };
}
