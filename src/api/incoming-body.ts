// Prepare's request with the VM folder's files as bytes, not base64 inside JSON. A direct-kernel
// guest's kernel and initrd are ~15 MB: as JSON they cost both agents ~0.4 s of CPU per move
// (encoding, a 20 MB parse, the base64 check) before the destination's first step
// (docs/performance.md § The folder's files as bytes). The body is one line of JSON (the request,
// each file named with its `size`), a newline, then the files' bytes one after the other.
import { InvalidInputError } from '../errors.js';

export const INCOMING_CONTENT_TYPE = 'application/x-ferry-incoming';

const NEWLINE = 0x0a;

/** The request (files as `{ path, size }`) and the files' bytes in the order it names them. */
export function encodeIncoming(request: unknown, files: readonly Buffer[]): Buffer {
  // JSON.stringify escapes every newline inside strings: the first newline ends the JSON.
  return Buffer.concat([Buffer.from(JSON.stringify(request) + '\n'), ...files]);
}

/**
 * Splits a body made by encodeIncoming. `parseJson` reads its first line (the agent passes its
 * server's JSON parser, which refuses `__proto__` and `constructor.prototype` keys as it does for
 * any JSON body). The JSON is returned unchecked (the route's schema checks it); what is checked
 * here is that the bytes after it are exactly the files it names.
 */
export function decodeIncoming(
  body: Buffer,
  parseJson: (text: string) => unknown,
): { request: unknown; files: Buffer[] } {
  const fix = `send the request as JSON, then a newline, then each file's bytes in order`;
  const end = body.indexOf(NEWLINE);
  if (end < 0) throw new InvalidInputError(`Cannot accept the request: it has no newline after its JSON; ${fix}`);
  let request: unknown;
  try {
    request = parseJson(body.subarray(0, end).toString('utf8'));
  } catch {
    // The agent's parser does not say which (a prototype key or bad syntax): both are named.
    throw new InvalidInputError(
      `Cannot accept the request: its first line is not JSON, or names a prototype key ('__proto__', ` +
        `'constructor.prototype'); ${fix}`,
    );
  }
  const sizes = fileSizes(request);
  const files: Buffer[] = [];
  let at = end + 1;
  for (const size of sizes) {
    if (at + size > body.length) break;
    files.push(body.subarray(at, at + size));
    at += size;
  }
  if (files.length !== sizes.length || at !== body.length) {
    const named = sizes.reduce((a, b) => a + b, 0);
    throw new InvalidInputError(
      `Cannot accept the request: its files' sizes add up to ${named} bytes but ${body.length - end - 1} follow ` +
        `its JSON; ${fix}`,
      { named, sent: body.length - end - 1 },
    );
  }
  return { request, files };
}

/** The sizes `storage.files[].size` names, in order (anything else: no bytes expected; the schema says why). */
function fileSizes(request: unknown): number[] {
  const files = (request as { storage?: { files?: unknown } } | null)?.storage?.files;
  if (!Array.isArray(files)) return [];
  return files.map((f) => {
    const size = (f as { size?: unknown } | null)?.size;
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)
      throw new InvalidInputError(
        `Cannot accept the request: a file's size is not a whole number of bytes; give each file its 'size'`,
      );
    return size;
  });
}
