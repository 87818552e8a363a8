// `ferry console` (the web console over HTTPS) and `ferry console user ...` (its users).
// Passwords come from --password-file, FERRY_CONSOLE_PASSWORD or a terminal prompt, never
// from a flag: `ps` shows every process's arguments.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError, Option, type Command } from '@commander-js/extra-typings';
import { FerryError, InvalidInputError } from '../../errors.js';
import type { GlobalOpts } from '../context.js';
import { printJson, printTable } from '../output.js';
import { name, positiveInt } from '../parse.js';
import { CONSOLE_ROLES } from '../../console/role-names.js';
import { consoleStateDir, usersFile } from '../../console/state.js';

type StateOpts = { users?: string; stateDir?: string };

const DURATION_UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3600_000, d: 86400_000 };

function duration(flag: string) {
  return (s: string): number => {
    const m = /^(\d{1,6})([smhd])$/.exec(s);
    const ms = m?.[1] && m[2] ? Number(m[1]) * (DURATION_UNITS[m[2]] ?? 0) : 0;
    if (ms < 1000)
      throw new InvalidArgumentError(`Cannot use ${flag} '${s}': write a duration such as 90s, 30m or 12h`);
    return ms;
  };
}

function origin(s: string): string {
  let u: URL | null = null;
  try {
    u = new URL(s);
  } catch {
    /* reported below */
  }
  if (u?.protocol !== 'https:' || u.origin !== s.replace(/\/$/, ''))
    throw new InvalidArgumentError(`Cannot use --origin '${s}': write an https origin such as https://console.example`);
  return u.origin;
}

/** Reads a password without echoing it (raw mode); Ctrl-C aborts. */
function promptHidden(prompt: string): Promise<string> {
  const stdin = process.stdin;
  process.stderr.write(prompt);
  stdin.setRawMode(true);
  stdin.resume();
  stdin.setEncoding('utf8');
  return new Promise((resolve, reject) => {
    let text = '';
    const done = (err: Error | null): void => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.off('data', onData);
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(text);
    };
    const onData = (chunk: string): void => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n') {
          done(null);
          return;
        }
        if (ch === '\u0003') {
          done(new FerryError('E_ABORTED', 'Cannot read the password: interrupted'));
          return;
        }
        if (ch === '\u007f' || ch === '\b') text = text.slice(0, -1);
        else text += ch;
      }
    };
    stdin.on('data', onData);
  });
}

/** The password for NAME: the file, else the environment, else a prompt (twice when new). */
async function readPassword(o: { passwordFile?: string }, what: string, confirm: boolean): Promise<string> {
  if (o.passwordFile) {
    const text = await fsp.readFile(path.resolve(o.passwordFile), 'utf8').catch((err: unknown) => {
      throw new InvalidInputError(`Cannot read --password-file ${o.passwordFile}: ${(err as Error).message}`);
    });
    return text.replace(/\r?\n$/, '');
  }
  const env = process.env.FERRY_CONSOLE_PASSWORD;
  if (env) return env;
  if (!process.stdin.isTTY)
    throw new InvalidInputError(
      `Cannot read the password for ${what}: give --password-file FILE, set FERRY_CONSOLE_PASSWORD, ` +
        'or run on a terminal to be asked',
    );
  const first = await promptHidden(`Password for ${what}: `);
  if (confirm && (await promptHidden('Again: ')) !== first)
    throw new InvalidInputError(`Cannot set the password for ${what}: the two entries differ; try again`);
  return first;
}

// Options of `console` are also recognised after `console user ...` (commander hands a
// parent's options to the parent wherever they stand), so the user commands read them merged.
type ConsoleOpts = GlobalOpts & StateOpts & { passwordFile?: string };
const merged = (cmd: unknown): ConsoleOpts => (cmd as { optsWithGlobals(): ConsoleOpts }).optsWithGlobals();
const USERS_HELP = 'the users file (default STATE/users.json)';
const STATE_HELP = "the console's state folder (default LAB/console, else ~/.config/ferry/console)";
const PASSWORD_HELP = 'read the password from FILE (else FERRY_CONSOLE_PASSWORD, else a prompt)';

export function registerConsole(program: Command): void {
  const consoleCmd = program
    .command('console')
    .description('serve the web console over HTTPS (named users: ferry console user add NAME --role R)')
    .option('--listen <addr:port>', 'where to serve it', '127.0.0.1:8443')
    .option('--cert <file>', 'the HTTPS certificate (PEM; default: one issued by the domain CA)')
    .option('--key <file>', "the certificate's key (PEM)")
    .option('--insecure-http', 'serve plain HTTP (loopback addresses only)')
    .option('--origin <url>', 'another origin the console is reached at, e.g. a proxy (repeatable)', collectOrigin)
    .option('--create-admin <name>', 'first run: add this admin unless it exists', name('--create-admin'))
    .option('--password-file <file>', PASSWORD_HELP)
    .option('--idle-timeout <duration>', 'end a session unused this long', duration('--idle-timeout'), 30 * 60_000)
    .option(
      '--session-lifetime <duration>',
      'end every session this long after login',
      duration('--session-lifetime'),
      12 * 3600_000,
    )
    .option(
      '--max-sessions <n>',
      'sessions per user (a new login ends the oldest)',
      positiveInt('--max-sessions', 100),
      5,
    )
    .option('--users <file>', USERS_HELP)
    .option('--state-dir <dir>', STATE_HELP)
    .option(
      '--web-dir <dir>',
      'the built web app (default: FERRY_WEB_DIR, the installed /usr/lib/ferry/web, or web/dist)',
    )
    .addOption(new Option('--token <token>').hideHelp())
    .action(async (o, cmd) => {
      if (o.token !== undefined)
        throw new InvalidInputError(
          'Cannot use --token: the console has named users now; add one with ' +
            "'ferry console user add NAME --role admin' and log in with it",
        );
      const g = merged(cmd);
      const admin = o.createAdmin;
      const { runConsole } = await import('../../console/main.js'); // fastify: only the console needs it
      await runConsole({
        global: g,
        stateDir: consoleStateDir(g),
        usersFile: usersFile(g),
        listen: o.listen,
        ...(o.cert ? { cert: path.resolve(o.cert) } : {}),
        ...(o.key ? { key: path.resolve(o.key) } : {}),
        insecureHttp: !!o.insecureHttp,
        origins: o.origin ?? [],
        limits: { idleMs: o.idleTimeout, absoluteMs: o.sessionLifetime, perUser: o.maxSessions },
        ...(o.webDir ? { webDir: path.resolve(o.webDir) } : {}),
        ...(admin ? { createAdmin: { name: admin, password: () => readPassword(g, admin, true) } } : {}),
      });
    });

  const user = consoleCmd.command('user').description("the console's users (names, roles, scrypt-hashed passwords)");
  user
    .command('add')
    .argument('<name>', 'user name', name('NAME'))
    .requiredOption('--role <role>', CONSOLE_ROLES.join(', '))
    .option('--password-file <file>', PASSWORD_HELP)
    .option('--users <file>', USERS_HELP)
    .option('--state-dir <dir>', STATE_HELP)
    .description('add a console user')
    .action(async (n, o, cmd) => {
      const { addUser, checkRole } = await import('../../console/users.js');
      const g = merged(cmd);
      const file = usersFile(g);
      const role = checkRole(o.role);
      await addUser(file, n, role, await readPassword(g, n, true));
      process.stdout.write(`console user ${n} (${role}) added to ${file}\n`);
    });
  user
    .command('passwd')
    .argument('<name>', 'user name', name('NAME'))
    .option('--password-file <file>', PASSWORD_HELP)
    .option('--users <file>', USERS_HELP)
    .option('--state-dir <dir>', STATE_HELP)
    .description("change a console user's password (ends the user's sessions)")
    .action(async (n, _o, cmd) => {
      const { setPassword } = await import('../../console/users.js');
      const g = merged(cmd);
      await setPassword(usersFile(g), n, await readPassword(g, n, true));
      process.stdout.write(`password of console user ${n} changed\n`);
    });
  user
    .command('rm')
    .argument('<name>', 'user name', name('NAME'))
    .option('--users <file>', USERS_HELP)
    .option('--state-dir <dir>', STATE_HELP)
    .description("remove a console user (ends the user's sessions)")
    .action(async (n, _o, cmd) => {
      const { removeUser } = await import('../../console/users.js');
      await removeUser(usersFile(merged(cmd)), n);
      process.stdout.write(`console user ${n} removed\n`);
    });
  user
    .command('list')
    .option('--json', 'JSON')
    .option('--users <file>', USERS_HELP)
    .option('--state-dir <dir>', STATE_HELP)
    .description('console users and their roles')
    .action(async (o, cmd) => {
      const { readUsers } = await import('../../console/users.js');
      const users = (await readUsers(usersFile(merged(cmd)))).map((u) => ({
        name: u.name,
        role: u.role,
        createdAt: u.createdAt,
        changedAt: u.changedAt,
      }));
      if (o.json) printJson(users);
      else
        printTable(
          ['NAME', 'ROLE', 'CREATED', 'PASSWORD CHANGED'],
          users.map((u) => [u.name, u.role, u.createdAt, u.changedAt]),
        );
    });
}

function collectOrigin(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), origin(v)];
}
