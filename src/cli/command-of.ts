// Which command a `ferry` command line runs, read before commander loads (launch.ts): the
// daemons (agent, fence, console) run from the ES module bundle, which holds their code; the
// CommonJS bundle that commands run from leaves it out (scripts/setup, scripts/bundle.ts).
export const DAEMON_COMMANDS: ReadonlySet<string> = new Set(['agent', 'fence', 'console']);

/** The program's options that take a value as the next argument (src/cli/program.ts). */
const GLOBAL_WITH_VALUE = new Set(['--lab', '--context']);

/** The command's name: the first argument that is not a global option or its value ('' when none). */
export function commandOf(args: readonly string[]): string {
  for (let i = 0; i < args.length; i++) {
    const a = args[i] ?? '';
    if (GLOBAL_WITH_VALUE.has(a)) i++;
    else if (!a.startsWith('-')) return a;
  }
  return '';
}
