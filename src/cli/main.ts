// Entry point of bin/ferry: run the program, map errors to the contract's exit codes, and
// never show a stack trace for a user error (FERRY_DEBUG=1 shows them for bugs).
import { CommanderError } from 'commander';
import { FerryError } from '../errors.js';
import { buildProgram } from './program.js';
import { exitCodeFor, exitWhenWritten, EXIT } from './exit.js';
import { dropGrpcIpServerNameWarning } from '../util/grpc-ip-warning.js';
import { DAEMON_COMMANDS, commandOf } from './command-of.js';

dropGrpcIpServerNameWarning();

// `ferry vm list | head -1`: the reader left, so there is nobody to tell anything; stop quietly
// instead of a Node stack trace. The daemons (agent, fence, console) only lose that output.
for (const stream of [process.stdout, process.stderr])
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    if (!DAEMON_COMMANDS.has(commandOf(process.argv.slice(2)))) process.exit(0);
  });

async function main(): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(process.argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode === 0 ? 0 : EXIT.usage;
    } else if (err instanceof FerryError) {
      process.stderr.write(`ferry: ${err.message}\n`);
      if (process.env.FERRY_DEBUG && !err.userError) process.stderr.write(`${err.stack}\n`);
      process.exitCode = exitCodeFor(err);
    } else {
      process.stderr.write(`ferry: internal error: ${err instanceof Error ? err.message : String(err)}\n`);
      if (process.env.FERRY_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
      process.exitCode = EXIT.failed;
    }
  }
}

// No top-level await: the same file is also bundled as CommonJS (dist/cli.cjs, see launch.ts).
// A command's action awaited all its work: exit once its output is written, instead of waiting
// for Node to close the sockets' last handles and tear its heap down (~20 ms of CPU and of a
// `move-vm`'s wall, measured). The daemons keep running after their action.
void main().then(() =>
  DAEMON_COMMANDS.has(commandOf(process.argv.slice(2)))
    ? undefined
    : exitWhenWritten([process.stdout, process.stderr], () => process.exit()),
);
