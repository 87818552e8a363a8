// The environment QEMU runs with (a VM's, and the disk daemon's: storage-daemon.ts): glibc's
// malloc told to keep I/O buffers in its heap. Why: every Ferry disk is opened with O_DIRECT
// (cache=none), so QEMU allocates its request buffers aligned to 4 KiB. glibc learns a large
// buffer's size at its first free (its dynamic mmap threshold), but from the aligned chunk, which
// is smaller than the next padded request: a 4 KiB-aligned 1 MiB buffer is a new mmap every
// time, however often it is freed (measured: 100 mmaps for 100 allocations; one for 100 at
// 512-byte alignment). An NBD server reads each of a mirror's 1 MiB requests into such a buffer:
// 256 page faults and a munmap per MiB, a quarter of the destination's CPU in a shared-nothing
// copy. Fixed thresholds stop it: buffers up to the mmap threshold come from the heap, and up to
// the trim threshold of freed heap at its top is kept for the next requests (without it the heap
// shrinks and grows again at every buffer). The price: a QEMU keeps that much more memory per
// malloc arena once it has copied, and freed holes below the top are not given back either.
// docs/performance.md § QEMU's buffers and glibc's malloc.
//
// glibc's older variables, not GLIBC_TUNABLES: glibc 2.36 (Debian 12) passes on only the first
// tunable it knows of that string to the programs it runs (nice, setpriv, systemd-run sit
// between the agent and QEMU); a value the administrator set in the agent's environment is kept.

const MIB = 1024 * 1024;

export const QEMU_MALLOC_ENV: Readonly<Record<string, string>> = {
  MALLOC_MMAP_THRESHOLD_: String(4 * MIB),
  MALLOC_TRIM_THRESHOLD_: String(32 * MIB),
};

/**
 * The agent's environment for a QEMU it starts: Ferry's malloc thresholds, unless already set
 * (an empty value counts as unset).
 */
export function qemuEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out = { ...env };
  for (const [k, v] of Object.entries(QEMU_MALLOC_ENV)) if (!out[k]) out[k] = v;
  return out;
}
