// `ferry host init|join|install-cert`, run on the host being enrolled: its key is made
// here and stays here; only the request (public) and the signed certificate travel.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import { InvalidInputError, messageOf } from '../../errors.js';
import type { HostInitResult } from '../../domain/host-init.js';
import { DEFAULT_CONFIG, DEFAULT_DATA_DIR, DEFAULT_TLS_DIR } from '../../domain/host-paths.js';
import { collect, name, positiveInt } from '../parse.js';
import { printJson } from '../output.js';

function report(r: HostInitResult, n: string, out: string | undefined, json: boolean | undefined): void {
  if (json) {
    printJson({ name: n, config: r.config, key: r.keyFile, request: r.csrFile, csr: r.csr });
    return;
  }
  if (!out) process.stdout.write(r.csr);
  process.stderr.write(
    `host ${n}: configuration ${r.config}; key ${r.keyFile} (stays on this host); request ${out ?? r.csrFile}\n` +
      `next: on the admin machine 'ferry domain sign ${out ? path.basename(out) : `${n}.csr`} --out ${n}.crt', ` +
      `then here 'ferry host install-cert ${n}.crt'\n`,
  );
}

async function writeOut(out: string | undefined, csr: string): Promise<void> {
  if (out) await fsp.writeFile(path.resolve(out), csr, { mode: 0o644 });
}

export function registerEnrol(host: Command): void {
  host
    .command('init')
    .argument('<name>', 'this host', name('NAME'))
    .requiredOption('--address <addr>', 'the address other hosts and the admin reach this host at')
    .option('--port <port>', "the agent's port", positiveInt('--port', 65535), 7443)
    .option('--config <file>', 'the agent configuration to write', DEFAULT_CONFIG)
    .option('--tls-dir <dir>', 'where the key, certificate and CA go', DEFAULT_TLS_DIR)
    .option('--data-dir <dir>', "the agent's data folder", DEFAULT_DATA_DIR)
    .option('--listen <addr:port>', 'what the agent listens on (default ADDRESS:PORT)')
    .option('--migration-address <addr>', 'the address migration streams come to (default the address)')
    .option('--san <ip>', 'another address for the certificate (repeatable; e.g. the migration network)', collect)
    .option('--ca-fingerprint <sha256>', "pin the domain's CA ('ferry domain show' prints it)")
    .option('--out <file>', 'write the request here instead of stdout')
    .option('--json', 'JSON')
    .description("on a host: write the agent's configuration, make its key and print a certificate request")
    .action(async (n, o) => {
      const { initHost } = await import('../../domain/host-init.js');
      const r = await initHost({
        name: n,
        address: o.address,
        port: o.port,
        config: path.resolve(o.config),
        tlsDir: path.resolve(o.tlsDir),
        dataDir: path.resolve(o.dataDir),
        ...(o.listen ? { listen: o.listen } : {}),
        ...(o.migrationAddress ? { migrationAddress: o.migrationAddress } : {}),
        ...(o.san ? { extraIps: o.san } : {}),
        ...(o.caFingerprint ? { caFingerprint: o.caFingerprint } : {}),
      });
      await writeOut(o.out, r.csr);
      report(r, n, o.out, o.json);
    });

  host
    .command('join')
    .argument('<token>', "the token 'ferry domain token' printed")
    .option('--name <name>', 'this host (must be the name the token is for)')
    .option('--config <file>', 'the agent configuration to write', DEFAULT_CONFIG)
    .option('--tls-dir <dir>', 'where the key, certificate and CA go', DEFAULT_TLS_DIR)
    .option('--data-dir <dir>', "the agent's data folder", DEFAULT_DATA_DIR)
    .option('--listen <addr:port>', "what the agent listens on (default the token's ADDRESS:PORT)")
    .option('--migration-address <addr>', 'the address migration streams come to')
    .option('--san <ip>', 'another address for the certificate (repeatable)', collect)
    .option('--out <file>', 'write the request here instead of stdout')
    .option('--json', 'JSON')
    .description('on a host: set up with a one-time join token (CA pinned, request carries the proof)')
    .action(async (token, o) => {
      const { joinHost } = await import('../../domain/host-init.js');
      const r = await joinHost(token, {
        config: path.resolve(o.config),
        tlsDir: path.resolve(o.tlsDir),
        dataDir: path.resolve(o.dataDir),
        ...(o.name ? { name: o.name } : {}),
        ...(o.listen ? { listen: o.listen } : {}),
        ...(o.migrationAddress ? { migrationAddress: o.migrationAddress } : {}),
        ...(o.san ? { extraIps: o.san } : {}),
      });
      await writeOut(o.out, r.csr);
      report(r, r.name, o.out, o.json);
    });

  host
    .command('install-cert')
    .argument('<file>', "the certificate 'ferry domain sign' wrote (host certificate and CA)")
    .option('--config <file>', 'the agent configuration (its tlsDir)', DEFAULT_CONFIG)
    .option('--tls-dir <dir>', "the TLS folder (default: the configuration's tlsDir)")
    .option('--json', 'JSON')
    .description("on a host: install its signed certificate after checking it against its key and the domain's CA")
    .action(async (file, o) => {
      const [{ tlsDirOf }, { installCertificate }] = await Promise.all([
        import('../../domain/host-init.js'),
        import('../../domain/request.js'),
      ]);
      const tlsDir = path.resolve(o.tlsDir ?? (await tlsDirOf(path.resolve(o.config))) ?? DEFAULT_TLS_DIR);
      const bundle = await fsp.readFile(path.resolve(file), 'utf8').catch((err: unknown) => {
        throw new InvalidInputError(
          `Cannot read ${file}: ${messageOf(err)}; give the file 'ferry domain sign --out' wrote`,
        );
      });
      const r = await installCertificate(tlsDir, bundle);
      if (o.json) {
        printJson({ ...r, tlsDir });
        return;
      }
      process.stdout.write(
        `host ${r.name}: certificate ${r.serial} installed in ${tlsDir}, valid until ${r.notAfter}\n` +
          `domain CA fingerprint (SHA-256): ${r.caFingerprint}\n` +
          (r.firstUse
            ? "  this host had not pinned the CA: compare it with 'ferry domain show' on the admin machine\n"
            : '') +
          'start the agent (systemctl enable --now ferry-agent); it renews its certificate itself\n',
      );
    });
}
