// gRPC (under etcd3) sends the host of an etcd endpoint as the TLS server name even when it
// is an IP address, and Node then warns (DEP0123) on every connection: noise in the middle of
// a command's output that the user cannot act on. Our own clients send no name for addresses
// (tls-name.ts); gRPC has no option for it, so this one warning, and no other, is dropped.
const DEP0123 = 'DEP0123';

function codeOf(args: unknown[]): string | undefined {
  const [a, b] = args;
  if (typeof b === 'string') return b; // emitWarning(warning, type, code)
  if (a && typeof a === 'object' && 'code' in a) return String(a.code); // (warning, options)
  return undefined;
}

let installed = false;

/** Drops Node's DEP0123 warning (a TLS server name that is an IP address) for this process. */
export function dropGrpcIpServerNameWarning(): void {
  if (installed) return;
  installed = true;
  const emit = process.emitWarning.bind(process) as (...a: unknown[]) => void;
  process.emitWarning = (warning: string | Error, ...rest: unknown[]) => {
    const code = warning instanceof Error && 'code' in warning ? String(warning.code) : codeOf(rest);
    if (code === DEP0123) return;
    emit(warning, ...rest);
  };
}
