// Where the console keeps its state: its users file and its certificate. A lab's console
// keeps them in the lab folder (LAB/console), so labs never share users; a console for real
// hosts keeps them in ~/.config/ferry/console ($XDG_CONFIG_HOME respected).
import os from 'node:os';
import path from 'node:path';
import type { GlobalOpts } from '../cli/context.js';

export function consoleStateDir(o: GlobalOpts & { stateDir?: string }): string {
  if (o.stateDir) return path.resolve(o.stateDir);
  const lab = o.lab ?? process.env.FERRY_LAB;
  if (!o.context && lab) return path.join(path.resolve(lab), 'console');
  const config = process.env.XDG_CONFIG_HOME || path.join(os.homedir(), '.config');
  return path.join(config, 'ferry', 'console');
}

export function usersFile(o: GlobalOpts & { stateDir?: string; users?: string }): string {
  return o.users ? path.resolve(o.users) : path.join(consoleStateDir(o), 'users.json');
}
