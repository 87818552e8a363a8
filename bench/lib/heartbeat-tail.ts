// Tails a VM's serial log files (one per QEMU process, or one per host for Ferry) from
// the benchmark process and stamps every new `ferry-hb SEQ GUEST_MS` line with its host
// arrival time. The guest's own clock stops while the VM is paused, so the host arrival
// times are what shows the pause a guest user would see.
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';

export interface HbArrival {
  seq: number;
  guestMs: number;
  t: number;
  file: string;
}

interface Tailed {
  pos: number;
  ino: number | null;
  partial: string;
}

const HB_RE = /ferry-hb (\d+) (\d+)\s*$/;
/** Lines worth reporting: the probe giving up, or the kernel complaining (QEMU-NOTES §E). */
const NOTABLE_RE = /Oops|BUG:|Kernel panic|ferry-workload-exit|ferry-probe-error|ferry-dirty-error|general protection/;

export class HeartbeatTail {
  readonly beats: HbArrival[] = [];
  readonly notable: Array<{ t: number; file: string; line: string }> = [];
  /** Times the heartbeat sequence went down (the guest rebooted: panic=-1 reboots at once). */
  readonly resets: Array<{ t: number; fromSeq: number; toSeq: number }> = [];
  private files = new Map<string, Tailed>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    readonly label: string,
    private pollMs = 3,
  ) {}

  /**
   * Follows `file`. fromStart=false skips what is already there (a file that does not
   * exist yet is read from its first byte once it appears).
   */
  add(file: string, fromStart = false): void {
    if (this.files.has(file)) return;
    let pos = 0;
    let ino: number | null = null;
    if (!fromStart) {
      try {
        const st = fs.statSync(file);
        pos = st.size;
        ino = st.ino;
      } catch {
        /* not there yet */
      }
    }
    this.files.set(file, { pos, ino, partial: '' });
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.poll(), this.pollMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  poll(): void {
    const now = performance.now();
    for (const [file, f] of this.files) {
      let st: fs.Stats;
      try {
        st = fs.statSync(file);
      } catch {
        continue;
      }
      if ((f.ino !== null && st.ino !== f.ino) || st.size < f.pos) {
        f.pos = 0;
        f.partial = '';
      }
      f.ino = st.ino;
      if (st.size <= f.pos) continue;
      let fd: number | null = null;
      try {
        fd = fs.openSync(file, 'r');
        const len = Math.min(st.size - f.pos, 4 * 1024 * 1024);
        const buf = Buffer.alloc(len);
        const n = fs.readSync(fd, buf, 0, len, f.pos);
        f.pos += n;
        const text = f.partial + buf.subarray(0, n).toString('latin1');
        const lines = text.split('\n');
        f.partial = lines.pop() ?? '';
        for (const raw of lines) {
          const line = raw.replace(/\r/g, '');
          const m = HB_RE.exec(line);
          if (m) {
            const seq = Number(m[1]);
            const last = this.beats.at(-1);
            if (last && seq < last.seq) this.resets.push({ t: now, fromSeq: last.seq, toSeq: seq });
            this.beats.push({ seq, guestMs: Number(m[2]), t: now, file });
          } else if (NOTABLE_RE.test(line)) this.notable.push({ t: now, file, line: line.slice(0, 200) });
        }
      } catch {
        /* the file went away between stat and read: next poll */
      } finally {
        if (fd !== null) fs.closeSync(fd);
      }
    }
  }

  get count(): number {
    return this.beats.length;
  }

  /** Waits until `n` heartbeats arrived after index `from` (or throws after `timeoutMs`). */
  async waitBeats(from: number, n: number, timeoutMs: number): Promise<void> {
    const until = performance.now() + timeoutMs;
    while (this.beats.length - from < n) {
      if (performance.now() > until) {
        throw new Error(
          `${this.label}: only ${this.beats.length - from} of ${n} heartbeats within ${timeoutMs} ms ` +
            '(guest stalled or dead?)',
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Waits until `n` heartbeats arrived after host time `t` (performance.now()). */
  async waitBeatsAfter(t: number, n: number, timeoutMs: number): Promise<void> {
    const until = performance.now() + timeoutMs;
    const count = (): number => {
      let c = 0;
      for (let i = this.beats.length - 1; i >= 0 && this.beats[i]!.t > t; i--) c++;
      return c;
    };
    while (count() < n) {
      if (performance.now() > until)
        throw new Error(
          `${this.label}: only ${count()} of ${n} heartbeats within ${timeoutMs} ms after the move ` +
            '(guest stalled or dead?)',
        );
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Did the guest reboot (sequence reset) or print a kernel oops between t0 and t1? */
  trouble(t0: number, t1: number): string | null {
    const r = this.resets.find((x) => x.t >= t0 && x.t <= t1);
    const o = this.notable.find((x) => x.t >= t0 && x.t <= t1);
    if (!r && !o) return null;
    return [
      o ? `guest console: ${o.line.replace(/^\[\s*[\d.]+\]\s*/, '')}` : '',
      r ? `heartbeat seq reset ${r.fromSeq}→${r.toSeq} (guest rebooted)` : '',
    ]
      .filter(Boolean)
      .join('; ');
  }

  /**
   * The largest host-time gap between consecutive heartbeats that arrived within [t0, t1],
   * plus what it spans. null when the window holds fewer than two heartbeats or none after
   * `mustFollow` (the guest never came back).
   */
  gap(
    t0: number,
    t1: number,
    mustFollow?: number,
  ): { maxGapMs: number; fromSeq: number; toSeq: number; lostSeqs: number } | null {
    const w = this.beats.filter((b) => b.t >= t0 && b.t <= t1).sort((a, b) => a.t - b.t || a.seq - b.seq);
    if (w.length < 2) return null;
    if (mustFollow !== undefined && !w.some((b) => b.t > mustFollow)) return null;
    let best = { maxGapMs: -1, fromSeq: 0, toSeq: 0, lostSeqs: 0 };
    let lost = 0;
    for (let i = 1; i < w.length; i++) {
      const a = w[i - 1]!;
      const b = w[i]!;
      if (b.seq > a.seq + 1) lost += b.seq - a.seq - 1;
      const g = b.t - a.t;
      if (g > best.maxGapMs) best = { maxGapMs: g, fromSeq: a.seq, toSeq: b.seq, lostSeqs: 0 };
    }
    best.lostSeqs = lost;
    return best;
  }
}
