// QEMU 7.2's NBD server leaves Nagle's algorithm on for the connections it accepts (QEMU 8.0
// corks and pushes each reply instead: "nbd/server: push pending frames after sending reply").
// With a mirror's 16 requests in flight, a small reply then waits for the client's delayed ACK,
// and a 512 MiB disk copied over NBD here took 1.9 s instead of 0.8 (docs/performance.md, "Nagle
// on the NBD server"). QMP takes a socket only by SCM_RIGHTS (`getfd`), which Node cannot send, so
// the agent sets TCP_NODELAY on the listening socket QEMU made: it borrows QEMU's descriptor with
// pidfd_getfd (Linux 5.6; the root agent may, by CAP_SYS_PTRACE: under systemd QEMU runs as
// ferry-qemu in a scope of its own, not as the agent's child) and sets the option on that
// socket, which every connection accepted afterwards inherits. Best effort: a copy is only
// slower without it, so nothing fails on it.
import fsp from 'node:fs/promises';
import { messageOf } from '../errors.js';

/** What the agent calls in libc; loaded once, on the first disk copy (the CLI never loads it). */
interface Libc {
  /** syscall(2) with two long arguments (the C function is variadic: each argument's type is given). */
  syscall2: (nr: number, a: number, b: number) => number;
  setsockopt: (fd: number, level: number, name: number, value: Buffer, len: number) => number;
  getsockopt: (fd: number, level: number, name: number, value: Buffer, len: Buffer) => number;
  close: (fd: number) => number;
  errno: () => number;
}

// pidfd_open and pidfd_getfd have the same numbers on every architecture (the common table).
const SYS_PIDFD_OPEN = 434;
const SYS_PIDFD_GETFD = 438;
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const TCP_LISTEN = '0A';
const TCP_ESTABLISHED = '01';

let libc: Promise<Libc> | undefined;

function loadLibc(): Promise<Libc> {
  libc ??= import('koffi').then(({ default: koffi }) => {
    const lib = koffi.load('libc.so.6');
    const syscall = lib.func('long syscall(long, ...)') as (...args: unknown[]) => number;
    return {
      syscall2: (nr: number, a: number, b: number): number => syscall(nr, 'long', a, 'long', b),
      setsockopt: lib.func('int setsockopt(int, int, int, const void *, uint32_t)') as Libc['setsockopt'],
      getsockopt: lib.func('int getsockopt(int, int, int, _Out_ void *, _Inout_ uint32_t *)') as Libc['getsockopt'],
      close: lib.func('int close(int)') as Libc['close'],
      errno: () => koffi.errno(),
    };
  });
  return libc;
}

/** A row of /proc/PID/net/tcp{,6}: the local port, the state (0A listening, 01 established), the inode. */
interface TcpRow {
  port: number;
  state: string;
  inode: string;
}

function tcpRows(tables: readonly string[]): TcpRow[] {
  const rows: TcpRow[] = [];
  for (const table of tables) {
    for (const line of table.split('\n').slice(1)) {
      // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
      const f = line.trim().split(/\s+/);
      const port = parseInt(f[1]?.split(':').pop() ?? '', 16);
      if (f.length >= 10 && f[3] && f[9] && Number.isInteger(port)) rows.push({ port, state: f[3], inode: f[9] });
    }
  }
  return rows;
}

/**
 * The inode of the socket listening on TCP `port` (IPv4 or IPv6) in a process's tables (its own
 * network namespace's); null when there is none. Pure.
 */
export function listenerInode(tables: readonly string[], port: number): string | null {
  return tcpRows(tables).find((r) => r.state === TCP_LISTEN && r.port === port)?.inode ?? null;
}

/** The descriptor number `pid` holds the socket `inode` under, or null. */
async function fdOfSocket(pid: number, inode: string): Promise<number | null> {
  const dir = `/proc/${pid}/fd`;
  for (const name of await fsp.readdir(dir)) {
    const link = await fsp.readlink(`${dir}/${name}`).catch(() => '');
    if (link === `socket:[${inode}]`) return Number(name);
  }
  return null;
}

async function readTables(pid: number): Promise<string[]> {
  const read = (f: string): Promise<string> => fsp.readFile(`/proc/${pid}/net/${f}`, 'utf8').catch(() => '');
  return Promise.all([read('tcp'), read('tcp6')]);
}

/** Runs `fn` on a copy of descriptor `fd` of process `pid`, closed afterwards. */
async function withBorrowedFd<T>(pid: number, fd: number, fn: (c: Libc, local: number) => T): Promise<T> {
  const c = await loadLibc();
  const pidfd = c.syscall2(SYS_PIDFD_OPEN, pid, 0);
  if (pidfd < 0) throw new Error(`pidfd_open failed (errno ${c.errno()})`);
  try {
    const local = c.syscall2(SYS_PIDFD_GETFD, pidfd, fd);
    if (local < 0) throw new Error(`pidfd_getfd failed (errno ${c.errno()})`);
    try {
      return fn(c, local);
    } finally {
      c.close(local);
    }
  } finally {
    c.close(pidfd);
  }
}

/** Finds the listening socket of `pid` at `port` and its descriptor; throws naming what is missing. */
async function listenerFd(pid: number, port: number): Promise<number> {
  const inode = listenerInode(await readTables(pid), port);
  if (!inode) throw new Error(`no socket listens on port ${port}`);
  const fd = await fdOfSocket(pid, inode);
  if (fd === null) throw new Error(`no descriptor holds the socket on port ${port}`);
  return fd;
}

/**
 * Sets TCP_NODELAY on the socket process `pid` listens on at `port`, so the connections it accepts
 * from now on send small replies at once. Returns null, or why it could not (it never throws).
 */
export async function noDelayOnListener(
  pid: number,
  port: number,
  opts: { signal?: AbortSignal } = {},
): Promise<string | null> {
  try {
    opts.signal?.throwIfAborted();
    const fd = await listenerFd(pid, port);
    const one = Buffer.alloc(4);
    one.writeInt32LE(1);
    return await withBorrowedFd(pid, fd, (c, local) =>
      c.setsockopt(local, IPPROTO_TCP, TCP_NODELAY, one, 4) === 0 ? null : `setsockopt failed (errno ${c.errno()})`,
    );
  } catch (err) {
    return messageOf(err);
  }
}

/** Whether TCP_NODELAY is set on descriptor `fd` of process `pid` (for tests and diagnostics). */
export async function tcpNoDelayOf(pid: number, fd: number): Promise<boolean> {
  return withBorrowedFd(pid, fd, (c, local) => {
    const v = Buffer.alloc(4);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(4);
    if (c.getsockopt(local, IPPROTO_TCP, TCP_NODELAY, v, len) !== 0)
      throw new Error(`getsockopt failed (errno ${c.errno()})`);
    return v.readInt32LE() !== 0;
  });
}

/** The descriptors of `pid` that are TCP sockets connected to its local `port` (accepted connections). */
export async function acceptedFds(pid: number, port: number): Promise<number[]> {
  const out: number[] = [];
  for (const r of tcpRows(await readTables(pid))) {
    if (r.state !== TCP_ESTABLISHED || r.port !== port) continue;
    const fd = await fdOfSocket(pid, r.inode);
    if (fd !== null) out.push(fd);
  }
  return out;
}
