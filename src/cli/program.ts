// The commander program: one file per command group under commands/.
import { Command } from '@commander-js/extra-typings';
// Bundled into the CLI at build time, so the installed package (no package.json) knows its version.
import pkg from '../../package.json' with { type: 'json' };
import { registerGuest } from './commands/guest.js';
import { registerVm } from './commands/vm.js';
import { registerCheckpoint } from './commands/checkpoint.js';
import { registerHost } from './commands/host.js';
import { registerAdmin } from './commands/admin.js';
import { registerDomain } from './commands/domain.js';
import { registerMove } from './commands/move.js';
import { registerCluster } from './commands/cluster.js';
import { registerImage } from './commands/image.js';
import { registerConsole } from './commands/console.js';
import { registerAudit } from './commands/audit.js';

export function buildProgram(): Command {
  const program = new Command('ferry')
    .description('Move running virtual machines between Linux hosts (QEMU/KVM)')
    .version(pkg.version)
    .exitOverride()
    .option('--lab <dir>', 'talk to the local lab in DIR (or set FERRY_LAB)')
    .option(
      '--context <file>',
      'endpoints and credentials of real hosts (default FERRY_CONTEXT or ~/.config/ferry/context.json)',
    )
    .configureOutput({ outputError: (s, write) => write(`ferry: ${s.replace(/^error: /, '')}`) });
  registerVm(program);
  registerCheckpoint(program);
  registerHost(program);
  registerMove(program);
  registerCluster(program);
  registerAdmin(program);
  registerDomain(program);
  registerConsole(program);
  registerAudit(program);
  registerGuest(program);
  registerImage(program);
  return program;
}
