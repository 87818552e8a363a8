// What a probe guest that prints nothing is doing, for a test's failure message: a hung guest
// (QEMU-NOTES §E can leave a kernel that never wakes, with no oops to show) and a guest whose
// serial output stopped while it ran on (its console's writes then block its disk writer within
// seconds) look alike in the serial log. Its disk and its vCPU tell them apart.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { highestAckIn, verifyDiskImage } from '../../guest/records.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { messageOf } from '../../src/errors.js';
import { sleep } from '../../src/util/exec.js';

interface Cpu {
  rip: string;
  halted: boolean;
}

/** RIP (EIP in 32-bit mode) and HLT of the first vCPU, from HMP's `info registers` (nothing else shows HLT). */
export function cpuOf(registers: string): Cpu | null {
  const rip = /\b[RE]IP=([0-9a-f]+)/.exec(registers)?.[1];
  const hlt = /HLT=(\d)/.exec(registers)?.[1];
  return rip && hlt ? { rip, halted: hlt === '1' } : null;
}

async function vcpuSamples(adminSocket: string, signal: AbortSignal): Promise<string> {
  const qmp = await QmpClient.connect(adminSocket, { timeoutMs: 5000, signal });
  try {
    const cpus: Cpu[] = [];
    for (let i = 0; i < 10; i++) {
      if (i) await sleep(100);
      const args = { 'command-line': 'info registers' };
      const c = cpuOf(await qmp.execute('human-monitor-command', args, { signal, timeoutMs: 5000 }));
      if (c) cpus.push(c);
    }
    const status = await qmp.execute('query-status', undefined, { signal, timeoutMs: 5000 });
    const rips = [...new Set(cpus.map((c) => c.rip))];
    const halted = cpus.filter((c) => c.halted).length;
    return (
      `QEMU ${status.status}; vCPU over 1 s: halted in ${halted} of ${cpus.length} samples ` +
      `(waiting for an interrupt), ${rips.length} distinct RIP (${rips.slice(0, 4).join(', ')})`
    );
  } finally {
    qmp.close();
  }
}

/**
 * One paragraph on a silent probe guest: the highest record on its first disk (twice, 2 s apart)
 * against the highest ack any host's serial log shows, and its vCPU's state. Never throws; each
 * part says why it could not be read.
 */
export async function silentGuestFacts(o: {
  lab: string;
  vmId: string;
  host: string;
  disk?: { path: string; format: string } | undefined;
}): Promise<string> {
  // One budget for all of it: the explanation must arrive before the test's own timeout.
  const signal = AbortSignal.timeout(30_000);
  const facts: string[] = [];
  const hosts = await fsp.readdir(path.join(o.lab, 'hosts')).catch(() => [] as string[]);
  const acked = async (): Promise<number> => {
    const logs = await Promise.all(
      hosts.map((h) =>
        fsp.readFile(path.join(o.lab, 'hosts', h, 'data', 'run', o.vmId, 'serial.log'), 'utf8').catch(() => ''),
      ),
    );
    return highestAckIn(logs) ?? 0;
  };
  if (o.disk) {
    try {
      const format = o.disk.format === 'raw' ? 'raw' : 'qcow2';
      const ack1 = await acked();
      const first = (await verifyDiskImage(o.disk.path, { format, timeoutMs: 12_000, signal })).highestSeq;
      await sleep(2000);
      const second = (await verifyDiskImage(o.disk.path, { format, timeoutMs: 12_000, signal })).highestSeq;
      const ack2 = await acked();
      const verdict =
        first === 0
          ? "no valid record on the disk at all (not the probe's disk, or never written)"
          : second <= first && ack2 > first
            ? `acknowledged records are missing from the disk (highest on it ${first}, ` +
              `highest acked ${ack2}): writes were lost`
            : second > first
              ? ack2 > ack1
                ? 'the guest writes its disk and prints its acks'
                : 'the guest still writes its disk but prints nothing: it runs, its console is silent'
              : first > ack2 + 2
                ? 'records past the last ack printed: the guest ran on without printing, then stopped writing ' +
                  'too (a console whose output stopped blocks the writer)'
                : 'no record past the last ack printed: the guest stopped writing when it stopped printing';
      facts.push(
        `disk: highest record ${first}, 2 s later ${second}; highest ack printed ${ack1}, then ${ack2}: ${verdict}`,
      );
    } catch (err) {
      facts.push(`disk: not read (${messageOf(err)})`);
    }
  }
  try {
    facts.push(await vcpuSamples(path.join(o.lab, 'hosts', o.host, 'data', 'run', o.vmId, 'qmp-admin.sock'), signal));
  } catch (err) {
    facts.push(`vCPU: not read (${messageOf(err)})`);
  }
  return facts.join('\n');
}
