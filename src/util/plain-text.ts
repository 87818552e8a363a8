// Text from another host, made safe to print: a hostile host of the domain (or a confused one)
// could put a terminal's control sequences in any string it answers (an error message, a VM's
// name, a step of a move), and the CLI prints them on the administrator's terminal, where an
// escape sequence can rewrite the screen, the window title or what was printed before. Every
// answer is parsed through `plainReviver`: each control character but tab and newline becomes
// U+FFFD. No answer Ferry sends legitimately holds one (a guest's console comes as raw bytes,
// not through JSON).

/** C0 controls but tab (9) and newline (10), DEL, and C1 controls (0x80–0x9f: 8-bit CSI and OSC). */
function isControl(c: number): boolean {
  return (c < 0x20 && c !== 9 && c !== 10) || (c >= 0x7f && c <= 0x9f);
}

/** `s` with every control character (isControl) replaced by U+FFFD. */
export function plainText(s: string): string {
  let i = 0;
  while (i < s.length && !isControl(s.charCodeAt(i))) i++;
  if (i === s.length) return s;
  let out = s.slice(0, i);
  for (; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out += isControl(c) ? '\ufffd' : String.fromCharCode(c);
  }
  return out;
}

/** A `JSON.parse` reviver: every string value and every key of the answer through plainText. */
export function plainReviver(this: unknown, _key: string, value: unknown): unknown {
  if (typeof value === 'string') return plainText(value);
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  // Keys are not revived by JSON.parse: an object with a dirty key is made again (rare: none is sent).
  const keys = Object.keys(value);
  if (keys.every((k) => plainText(k) === k)) return value;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [plainText(k), v]));
}

/**
 * Could `text` (JSON) hold a control character? JSON writes one below 0x20 only as an escape
 * (`\u00XX`, `\b`, `\f`, `\r`, ...), DEL and C1 as themselves. A false yes (an escaped backslash
 * before an `r`) only costs the slower parse.
 */
const MAYBE_CONTROL = /\\(?:u00[0189]|u007f|[bfr])|[\x7f-\x9f]/i;

/** `JSON.parse(text)`, with plainReviver when the text may hold a control character (4× slower). */
export function parsePlain(text: string): unknown {
  return MAYBE_CONTROL.test(text) ? (JSON.parse(text, plainReviver) as unknown) : (JSON.parse(text) as unknown);
}
