// The commander program: one file per command group under commands/.
import { Command } from '@commander-js/extra-typings';
import { readFileSync } from 'node:fs';
import { registerGuest } from './commands/guest.js';

export function buildProgram(): Command {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  const program = new Command('ferry')
    .description('Move running virtual machines between Linux hosts (QEMU/KVM)')
    .version(pkg.version)
    .exitOverride()
    .configureOutput({ outputError: (s, write) => write(`ferry: ${s.replace(/^error: /, '')}`) });
  registerGuest(program);
  return program;
}
