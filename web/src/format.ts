// Number formatting shared by every view: sizes in MiB (GiB when large), rates in MiB/s,
// durations in seconds.
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  if (Math.abs(n) >= GiB) return `${(n / GiB).toFixed(1)} GiB`;
  if (Math.abs(n) >= 100 * MiB) return `${Math.round(n / MiB)} MiB`;
  if (Math.abs(n) >= MiB || n === 0) return `${(n / MiB).toFixed(1)} MiB`;
  return `${(n / 1024).toFixed(1)} KiB`;
}

export function mib(n: number): string {
  return `${n} MiB`;
}

export function rate(bps: number | null | undefined): string {
  if (bps === null || bps === undefined || !Number.isFinite(bps)) return '–';
  return `${(bps / MiB).toFixed(1)} MiB/s`;
}

export function seconds(s: number | null | undefined): string {
  if (s === null || s === undefined || !Number.isFinite(s)) return '–';
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 120) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

export function ms(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return v < 1000 ? `${Math.round(v)} ms` : seconds(v / 1000);
}

export function percent(p: number): string {
  return `${Math.floor(Math.max(0, Math.min(1, p)) * 100)}%`;
}

export function time(iso: string | null | undefined): string {
  if (!iso) return '–';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
}

export function basename(p: string): string {
  return p.replace(/\/+$/, '').split('/').pop() ?? p;
}

export function joinPath(dir: string, name: string): string {
  const n = name.trim().replace(/^\/+/, '');
  if (!n) return dir;
  return `${dir.replace(/\/+$/, '')}/${n}`;
}

export function dirname(p: string): string {
  const t = p.replace(/\/+$/, '');
  const i = t.lastIndexOf('/');
  return i <= 0 ? '/' : t.slice(0, i);
}
