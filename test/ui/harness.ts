// What every browser test needs: `ferry console` on a lab (its URL once it listens) and
// Debian's Chromium through playwright-core, headless, with a fresh profile.
import { spawn, type ChildProcess } from 'node:child_process';
import fsp from 'node:fs/promises';
import { ferry } from '../e2e/cli.js';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { REPO_ROOT } from '../../guest/paths.js';

export const tid = (id: string): string => `[data-testid="${id}"]`;

/** Starts the console for LAB with TOKEN; resolves with the process and its URL. */
export async function startConsole(lab: string, token: string): Promise<{ proc: ChildProcess; url: string }> {
  const proc = spawn(path.join(REPO_ROOT, 'bin', 'ferry'), ['console', '--listen', '127.0.0.1:0', '--token', token], {
    env: { ...process.env, FERRY_LAB: lab },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`console did not start: ${out}`)), 30_000);
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /(http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(m[1]!);
      }
    });
  });
  return { proc, url };
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    // playwright gives every launch a fresh, empty user-data dir.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** Tears down what a browser test started, whatever state it got to. */
export async function stopAll(o: {
  browser: Browser | null;
  consoleProc: ChildProcess | null;
  lab: string;
  dir: string;
}): Promise<void> {
  await o.browser?.close().catch(() => undefined);
  o.consoleProc?.kill('SIGTERM');
  if (o.lab) await ferry(['lab', 'down', '--dir', o.lab]);
  if (o.dir) await fsp.rm(o.dir, { recursive: true, force: true });
}
