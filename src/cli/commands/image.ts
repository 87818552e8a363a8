// `ferry image build debian --out FILE`: the project's Debian 12 test guest, built by
// guest/debian/build.sh. An up-to-date build in the guest cache is copied as it is; otherwise
// the script builds into a temporary folder (minutes; root and the Debian mirror needed).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import { REPO_ROOT, debianGuestDir } from '../../../guest/paths.js';
import { AbortedError, FerryError, InvalidInputError, TimeoutError } from '../../errors.js';
import { imageInfo } from '../../qemu/img.js';
import { bytes, printJson } from '../output.js';

const IMAGES = ['debian'] as const;
const BUILD_TIMEOUT_MS = 30 * 60_000;

export function registerImage(program: Command): void {
  const image = program.command('image').description("disk images of the project's test guests");
  image
    .command('build')
    .description(
      'build a test guest image and write it to FILE (debian: Debian 12, systemd, cloud-init, BIOS and UEFI boot)',
    )
    .argument('<name>', `image to build: ${IMAGES.join(', ')}`)
    .requiredOption('--out <file>', 'where to write the image (qcow2)')
    .option('--force', 'replace FILE if it exists')
    .option('--json', 'print the result as JSON')
    .action(async (name, o) => {
      if (!(IMAGES as readonly string[]).includes(name)) {
        throw new InvalidInputError(`Cannot build image '${name}': no such image; use one of: ${IMAGES.join(', ')}`, {
          name,
        });
      }
      const out = path.resolve(o.out);
      await checkOut(out, Boolean(o.force));
      const script = path.join(REPO_ROOT, 'guest', 'debian', 'build.sh');
      if (!fs.existsSync(script)) {
        throw new FerryError(
          'E_IMAGE_BUILD',
          `Cannot build image 'debian': ${script} is missing; run this from a Ferry checkout`,
        );
      }
      const ac = new AbortController();
      const onSig = (): void => ac.abort(new Error('interrupted'));
      process.once('SIGINT', onSig);
      const started = Date.now();
      let tmp: string | null = null;
      try {
        const cache = debianGuestDir();
        let dir = cache;
        const upToDate = (await runScript(script, ['--check', cache], ac.signal, 60_000, 'ignore')) === 0;
        if (upToDate) {
          process.stderr.write(`ferry: the Debian image in ${cache} is up to date\n`);
        } else {
          if (process.getuid?.() !== 0) {
            throw new FerryError(
              'E_FORBIDDEN',
              "Cannot build image 'debian': building needs root (mmdebstrap, chroot); run it as root",
            );
          }
          tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-image-'));
          dir = tmp;
          process.stderr.write(`ferry: building the Debian 12 image in ${tmp} (a few minutes)\n`);
          const code = await runScript(script, [tmp], ac.signal, BUILD_TIMEOUT_MS, 'inherit');
          if (code !== 0) {
            throw new FerryError(
              'E_IMAGE_BUILD',
              `Cannot build image 'debian': ${script} exited with code ${code}; see its messages above`,
              {
                context: { exitCode: code },
              },
            );
          }
        }
        const partial = `${out}.partial-${process.pid}`;
        try {
          await fsp.copyFile(path.join(dir, 'debian.qcow2'), partial);
          await fsp.rename(partial, out);
        } finally {
          await fsp.rm(partial, { force: true });
        }
        const info = await imageInfo(out, { signal: ac.signal });
        const result = {
          file: out,
          format: info.format,
          virtualSizeBytes: info.virtualSizeBytes,
          actualSizeBytes: info.actualSizeBytes,
          built: !upToDate,
          seconds: Math.round((Date.now() - started) / 100) / 10,
        };
        if (o.json) printJson(result);
        else
          process.stdout.write(
            `${out}: ${info.format}, ${bytes(info.virtualSizeBytes)} virtual, ${bytes(info.actualSizeBytes)} on disk\n`,
          );
      } finally {
        process.off('SIGINT', onSig);
        if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
      }
    });
}

async function checkOut(out: string, force: boolean): Promise<void> {
  const st = await fsp.stat(out).catch(() => null);
  if (st?.isDirectory())
    throw new InvalidInputError(`Cannot write the image to ${out}: it is a folder; give a file name`, { out });
  if (st && !force) {
    throw new InvalidInputError(`Cannot write the image to ${out}: the file exists; add --force to replace it`, {
      out,
    });
  }
  const parent = await fsp.stat(path.dirname(out)).catch(() => null);
  if (!parent?.isDirectory()) {
    throw new InvalidInputError(
      `Cannot write the image to ${out}: the folder ${path.dirname(out)} does not exist; create it first`,
      { out },
    );
  }
}

/** Runs the build script in its own process group (so a cancel stops mmdebstrap too); resolves to its exit code. */
function runScript(
  script: string,
  args: string[],
  signal: AbortSignal,
  timeoutMs: number,
  stderr: 'inherit' | 'ignore',
): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(script, args, { stdio: ['ignore', 'ignore', stderr], detached: true });
    let why: FerryError | null = null;
    const stop = (e: FerryError): void => {
      why ??= e;
      try {
        if (child.pid) process.kill(-child.pid, 'SIGTERM');
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(
      () => stop(new TimeoutError(`build the Debian image with ${script}`, timeoutMs)),
      timeoutMs,
    );
    const onAbort = (): void => stop(new AbortedError("build image 'debian'", signal.reason));
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    };
    child.on('error', (err) => {
      done();
      reject(
        new FerryError('E_IMAGE_BUILD', `Cannot run ${script}: ${err.message}; check that it is executable`, {
          cause: err,
        }),
      );
    });
    child.on('exit', (code, sig) => {
      done();
      if (why) reject(why);
      else resolve(code ?? (sig ? 128 : 1));
    });
  });
}
