// Node 20 builds its default root store the first time a process makes any TLS context, even
// one given its own `ca`: every context Ferry makes is (it trusts only its domain's CA). That
// store is ~140 bundled certificates parsed through OpenSSL 3: ~20 ms of CPU here, in every CLI
// command that connects (docs/performance.md, "Node's certificate stores"). Ferry's launchers
// start Node with --use-openssl-ca, under which the store is read from OpenSSL's default
// certificate file instead, when it is made: made here once with that file empty, it costs
// ~1 ms. Nothing of Ferry's verifies against it; a context without `ca` would trust nothing.
import tls from 'node:tls';

let made = false;

/** Empties the process's default root store, once, before its first TLS context (no-op without --use-openssl-ca). */
export function emptyDefaultRootStore(execArgv: readonly string[] = process.execArgv): void {
  if (made) return;
  made = true;
  if (!execArgv.includes('--use-openssl-ca')) return;
  const before = process.env.SSL_CERT_FILE;
  // OpenSSL reads the variable when the store is made: only for this call, so that what this
  // process starts (QEMU, qemu-img, etcd) sees the environment it was given.
  process.env.SSL_CERT_FILE = '/dev/null';
  try {
    tls.createSecureContext();
  } finally {
    if (before === undefined) delete process.env.SSL_CERT_FILE;
    else process.env.SSL_CERT_FILE = before;
  }
}
