// What every browser (and console security) test needs: `ferry console` on a lab over HTTPS
// with named users (its URL once it listens), an HTTPS client that trusts the lab's CA,
// and Debian's Chromium through playwright-core, headless, with a fresh profile, trusting
// the lab's CA.
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { ferry } from '../e2e/cli.js';
import { REPO_ROOT } from '../../guest/paths.js';

export const tid = (id: string): string => `[data-testid="${id}"]`;

export interface ConsoleUserSpec {
  name: string;
  role: 'admin' | 'operator' | 'viewer';
  password: string;
}

export interface RunningConsole {
  proc: ChildProcess;
  /** https://127.0.0.1:PORT/ */
  url: string;
  /** https://127.0.0.1:PORT */
  origin: string;
  /** The lab's CA certificate (PEM), which signed the console's certificate. */
  ca: string;
}

export const labCa = (lab: string): string => fs.readFileSync(path.join(lab, 'domain', 'ca.crt'), 'utf8');

/**
 * Adds the users the lab's console does not have yet (password through the environment);
 * STATE_ARGS (--state-dir DIR, --users FILE) name another console's users file.
 */
export async function addConsoleUsers(
  lab: string,
  users: readonly ConsoleUserSpec[],
  stateArgs: readonly string[] = [],
): Promise<void> {
  const list = await ferry(['console', 'user', 'list', '--json', ...stateArgs], { lab });
  if (list.code !== 0) throw new Error(`console user list failed: ${list.stderr}`);
  const have = new Set((JSON.parse(list.stdout || '[]') as Array<{ name: string }>).map((u) => u.name));
  for (const u of users) {
    if (have.has(u.name)) continue;
    const r = await ferry(['console', 'user', 'add', u.name, '--role', u.role, ...stateArgs], {
      lab,
      env: { FERRY_CONSOLE_PASSWORD: u.password },
    });
    if (r.code !== 0) throw new Error(`console user add ${u.name} failed: ${r.stderr}`);
  }
}

/**
 * Starts the console for LAB (HTTPS, certificate from the lab's CA) with these users; ARGS
 * go to `ferry console`, and its --state-dir/--users also to the user commands.
 */
export async function startConsole(
  lab: string,
  users: readonly ConsoleUserSpec[],
  args: readonly string[] = [],
): Promise<RunningConsole> {
  const stateArgs = args.flatMap((a, i) => (['--state-dir', '--users'].includes(a) ? [a, args[i + 1]!] : []));
  await addConsoleUsers(lab, users, stateArgs);
  const proc = spawn(path.join(REPO_ROOT, 'bin', 'ferry'), ['console', '--listen', '127.0.0.1:0', ...args], {
    env: { ...process.env, FERRY_LAB: lab },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => {
      reject(new Error(`console did not start: ${out}`));
    }, 30_000);
    proc.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`console exited ${code}: ${out}`));
    });
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /(https:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(m[1]!);
      }
    });
  });
  return { proc, url, origin: url.replace(/\/$/, ''), ca: labCa(lab) };
}

/** Chromium that trusts certificates whose chain holds this CA's key (the console sends its CA in the chain). */
export function launchChromium(caPem: string): Promise<Browser> {
  const spki = crypto
    .createHash('sha256')
    .update(new crypto.X509Certificate(caPem).publicKey.export({ type: 'spki', format: 'der' }))
    .digest('base64');
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    // playwright gives every launch a fresh, empty user-data dir (which this flag needs).
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
}

/** Logs PAGE in to the console at URL. */
export async function login(page: Page, url: string, user: ConsoleUserSpec): Promise<void> {
  await page.goto(url);
  await page.fill(tid('login-name'), user.name);
  await page.fill(tid('login-password'), user.password);
  await page.click(tid('login-submit'));
  await page.waitForSelector(`${tid('whoami')}[data-role="${user.role}"]`, { timeout: 30_000 });
}

/** Content-Security-Policy violations Chromium reports on PAGE (the app must cause none). */
export function watchCsp(page: Page): string[] {
  const seen: string[] = [];
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) seen.push(m.text());
  });
  return seen;
}

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: unknown;
}

/**
 * One HTTPS request trusting the lab's CA, as a script (or a stolen cookie's holder) would
 * send it: the path goes out exactly as given (no URL normalisation of dot segments).
 */
export function request(
  con: Pick<RunningConsole, 'ca' | 'origin'>,
  method: string,
  pathAndQuery: string,
  o: { headers?: Record<string, string>; body?: string; timeoutMs?: number } = {},
): Promise<Answer> {
  const u = new URL(con.origin);
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        hostname: u.hostname,
        port: u.port,
        path: pathAndQuery,
        method,
        ca: con.ca,
        // A forged Host header must still reach the console (it names another server than the certificate's).
        ...(o.headers?.host ? { servername: 'localhost', checkServerIdentity: () => undefined } : {}),
        headers: { ...o.headers, ...(o.body !== undefined ? { 'content-length': Buffer.byteLength(o.body) } : {}) },
        timeout: o.timeoutMs ?? 30_000,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          let json: unknown = null;
          try {
            json = JSON.parse(text);
          } catch {
            /* not JSON */
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${pathAndQuery}: no answer`)));
    req.on('error', reject);
    req.end(o.body);
  });
}

/** Tears down what a browser test started, whatever state it got to. */
export async function stopAll(o: {
  browser: Browser | null;
  consoles: Array<ChildProcess | null | undefined>;
  lab: string;
  dir: string;
}): Promise<void> {
  await o.browser?.close().catch(() => undefined);
  await Promise.all(
    o.consoles.map(async (p) => {
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const gone = new Promise<boolean>((r) => p.once('exit', () => r(true)));
      p.kill('SIGTERM');
      if (!(await Promise.race([gone, new Promise<boolean>((r) => setTimeout(() => r(false), 5000))])))
        p.kill('SIGKILL');
    }),
  );
  if (o.lab) await ferry(['lab', 'down', '--dir', o.lab]);
  if (o.dir) await fsp.rm(o.dir, { recursive: true, force: true });
}
