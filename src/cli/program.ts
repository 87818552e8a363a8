// The commander program: one file per command group under commands/.
import { Command } from '@commander-js/extra-typings';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../../guest/paths.js';
import { registerGuest } from './commands/guest.js';
import { registerVm } from './commands/vm.js';
import { registerHost } from './commands/host.js';
import { registerAdmin } from './commands/admin.js';
import { registerMove } from './commands/move.js';
import { registerCluster } from './commands/cluster.js';
import { registerConsole } from './commands/console.js';

export function buildProgram(): Command {
  const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
  const program = new Command('ferry')
    .description('Move running virtual machines between Linux hosts (QEMU/KVM)')
    .version(pkg.version)
    .exitOverride()
    .option('--lab <dir>', 'talk to the local lab in DIR (or set FERRY_LAB)')
    .option('--context <file>', 'endpoints and credentials of real hosts (JSON)')
    .configureOutput({ outputError: (s, write) => write(`ferry: ${s.replace(/^error: /, '')}`) });
  registerVm(program);
  registerHost(program);
  registerMove(program);
  registerCluster(program);
  registerAdmin(program);
  registerConsole(program);
  registerGuest(program);
  return program;
}
