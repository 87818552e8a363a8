// Runs bin/ferry as a user would, for e2e tests.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { REPO_ROOT } from '../../guest/paths.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function ferry(
  args: string[],
  opts: { lab?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      path.join(REPO_ROOT, 'bin', 'ferry'),
      args,
      {
        timeout: opts.timeoutMs ?? 180_000,
        maxBuffer: 32 * 1024 * 1024,
        env: { ...process.env, ...(opts.lab ? { FERRY_LAB: opts.lab } : {}), ...opts.env },
      },
      (err, stdout, stderr) => {
        const code = err
          ? typeof (err as { code?: unknown }).code === 'number'
            ? (err as { code: number }).code
            : 1
          : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** Runs and expects exit 0; returns parsed JSON when --json is among the args. */
export async function ferryOk<T = unknown>(
  args: string[],
  opts: { lab?: string; timeoutMs?: number } = {},
): Promise<T> {
  const r = await ferry(args, opts);
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return (args.includes('--json') ? JSON.parse(r.stdout) : r.stdout) as T;
}
