// CPU time of a process from /proc/PID/stat, for the benchmarks.
import fs from 'node:fs/promises';

const TICK_MS = 1000 / 100; // USER_HZ: /proc's CPU times are in 1/100 s on Linux

/** utime+stime (own) and cutime+cstime (waited-for children) of PID, in ms. */
export async function cpuOf(pid: number | 'self'): Promise<{ own: number; children: number }> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command (which may hold spaces): state is field 3, utime 14 … cstime 17.
  const f = stat
    .slice(stat.lastIndexOf(')') + 2)
    .split(' ')
    .map(Number);
  const at = (field: number): number => f[field - 3] ?? NaN;
  return { own: (at(14) + at(15)) * TICK_MS, children: (at(16) + at(17)) * TICK_MS };
}
