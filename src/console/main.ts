// `ferry console`: picks the certificate (given, or issued by the domain's CA), checks the
// users file, serves until SIGINT/SIGTERM, and renews an issued certificate while running.
import path from 'node:path';
import type { DomainInfo } from '../domain/ca.js';
import { loadContext, type GlobalOpts } from '../cli/context.js';
import { parseListen } from '../agent/config.js';
import { FerryError } from '../errors.js';
import { buildConsole, renewTls } from './server.js';
import type { SessionLimits } from './sessions.js';
import { addUser, UserStore } from './users.js';
import { consoleNames, domainTls, givenTls, isLoopback, reachableDomain, urlHost, type ConsoleTls } from './tls.js';

const RENEW_CHECK_MS = 12 * 3600_000;

export interface RunConsoleOptions {
  global: GlobalOpts;
  stateDir: string;
  usersFile: string;
  listen: string;
  cert?: string;
  key?: string;
  insecureHttp: boolean;
  origins: string[];
  limits: Partial<SessionLimits>;
  webDir?: string;
  createAdmin?: { name: string; password: () => Promise<string> };
}

function usage(message: string): FerryError {
  return new FerryError('E_USAGE', message);
}

export async function runConsole(o: RunConsoleOptions): Promise<void> {
  const listen = parseListen(o.listen);
  const context = await loadContext(o.global);
  if (!!o.cert !== !!o.key) throw usage('Cannot serve the console over HTTPS: give both --cert FILE and --key FILE');
  if (o.insecureHttp && (o.cert || o.key))
    throw usage('Cannot serve plain HTTP with a certificate: drop --insecure-http or --cert/--key');
  if (o.insecureHttp && !isLoopback(listen.host))
    throw usage(
      `Cannot serve plain HTTP on ${listen.host}: passwords and session cookies would cross the network in clear; ` +
        'serve HTTPS (drop --insecure-http) or listen on 127.0.0.1',
    );

  const users = new UserStore(o.usersFile);
  if (o.createAdmin && !(await users.get(o.createAdmin.name))) {
    await addUser(o.usersFile, o.createAdmin.name, 'admin', await o.createAdmin.password());
    process.stderr.write(`console user ${o.createAdmin.name} (admin) added to ${o.usersFile}\n`);
  }
  if ((await users.load()).length === 0)
    throw new FerryError(
      'E_CONSOLE_NO_USERS',
      `Cannot serve the console: nobody could log in (no users in ${o.usersFile}); add one with ` +
        "'ferry console user add NAME --role admin' or start with --create-admin NAME",
    );

  const domain = o.cert || o.insecureHttp ? null : await reachableDomain(context.credentials.ca);
  const tlsDir = path.join(o.stateDir, 'tls');
  const issue = (d: DomainInfo): Promise<ConsoleTls> => domainTls(d, tlsDir, consoleNames(listen.host));
  let tls: ConsoleTls | null = null;
  if (o.cert && o.key) tls = await givenTls(o.cert, o.key);
  else if (domain) tls = await issue(domain);
  else if (!o.insecureHttp)
    throw new FerryError(
      'E_CONSOLE_TLS',
      `Cannot serve the console over HTTPS: no --cert/--key given and this context cannot reach the domain's CA ` +
        `(no ca.key beside ${context.credentials.ca}); give --cert FILE --key FILE ` +
        '(or --insecure-http on a loopback address)',
    );

  const app = await buildConsole({
    context,
    users,
    tls,
    httpNames: ['127.0.0.1', 'localhost', '::1'],
    extraOrigins: o.origins,
    limits: o.limits,
    ...(o.webDir ? { webDir: o.webDir } : {}),
  });
  await app.listen({ host: listen.host, port: listen.port });
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : listen.port;
  const host = listen.host.includes(':') ? `[${urlHost(listen.host)}]` : listen.host;
  process.stdout.write(`Ferry console at ${tls ? 'https' : 'http'}://${host}:${port}/\n`);
  if (tls) process.stdout.write(`certificate: ${tls.source}, valid until ${tls.expiresAt.toISOString()}\n`);
  process.stdout.write(`users: ${o.usersFile}\n`);

  const renew = domain
    ? setInterval(() => {
        issue(domain)
          .then((t) => {
            if (t.expiresAt.getTime() !== tls?.expiresAt.getTime()) {
              tls = t;
              renewTls(app, t);
            }
          })
          .catch((err: unknown) => process.stderr.write(`console: ${(err as Error).message}\n`));
      }, RENEW_CHECK_MS)
    : undefined;
  renew?.unref();
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  clearInterval(renew);
  await app.close();
}
