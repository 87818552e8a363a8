// The agent's own TLS state: its certificate, the domain's revocation list, and renewal.
// Both change without a restart: the server's secure context is swapped (new handshakes
// use it, open connections keep going), and connections of a certificate the new CRL
// revokes are cut at once. Renewal: when 2/3 of the certificate's lifetime has passed the
// agent makes a new key and request in TLS/renew/ (the key never leaves this folder); the
// admin's `ferry domain renew` fetches the request, signs it and pushes the certificate
// back, and the agent checks it and swaps key and certificate together.
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type tls from 'node:tls';
import type { TLSSocket } from 'node:tls';
import type pino from 'pino';
import { FerryError, InvalidInputError, NotFoundError, messageOf } from '../errors.js';
import type { CertificateView, TlsView } from '../api/schemas.js';
import { exists, makeRequest, writeAtomic, TLS_FILES } from '../domain/request.js';
import {
  caFingerprint,
  certAltNames,
  checkHostCertificate,
  normSerial,
  pemBlocks,
  readCrl,
  type CrlInfo,
} from '../domain/x509.js';
import type { AgentConfig } from './config.js';

/** When a certificate should be renewed: 2/3 of its lifetime. */
export function renewAt(notBefore: Date, notAfter: Date): Date {
  return new Date(notBefore.getTime() + ((notAfter.getTime() - notBefore.getTime()) * 2) / 3);
}

const CHECK_EVERY_MS = 60 * 60 * 1000;

export class HostTls {
  private server: tls.Server | null = null;
  private sockets = new Set<TLSSocket>();
  private crl: CrlInfo | null = null;
  private cert: X509Certificate;
  private timer: NodeJS.Timeout | null = null;
  /** One change at a time (CRL, renewal request, certificate swap). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private files: AgentConfig['tls'],
    private host: { name: string; port: number },
    private log: pino.Logger,
  ) {
    this.cert = new X509Certificate(fs.readFileSync(files.cert));
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => undefined);
    return p;
  }

  private get renewKey(): string {
    return path.join(this.files.renewDir, TLS_FILES.key);
  }
  private get renewCsr(): string {
    return path.join(this.files.renewDir, TLS_FILES.csr);
  }
  private get renewCert(): string {
    return path.join(this.files.renewDir, TLS_FILES.cert);
  }

  /**
   * Finishes a swap an earlier life of the agent was killed in (the new certificate is
   * written to renew/ only after it was checked), then loads the CRL when there is one.
   */
  static async open(
    files: AgentConfig['tls'],
    host: { name: string; port: number },
    log: pino.Logger,
  ): Promise<HostTls> {
    const renewKey = path.join(files.renewDir, TLS_FILES.key);
    const renewCert = path.join(files.renewDir, TLS_FILES.cert);
    if (await exists(renewCert)) {
      if (await exists(renewKey)) await fsp.rename(renewKey, files.key);
      await fsp.rename(renewCert, files.cert);
      await fsp.rm(path.join(files.renewDir, TLS_FILES.csr), { force: true });
      log.info('finished a certificate swap an earlier run was stopped in');
    }
    const t = new HostTls(files, host, log);
    const crl = await fsp.readFile(files.crl, 'utf8').catch(() => null);
    if (crl) {
      t.crl = await readCrl(crl, await fsp.readFile(files.ca, 'utf8')).catch((err: unknown) => {
        throw new FerryError(
          'E_TLS_CRL',
          `Cannot start agent '${host.name}': ` +
            `${files.crl} is not a revocation list of this domain (${messageOf(err)}); ` +
            `remove it and push the domain's CRL with 'ferry domain push-crl'`,
          { cause: err },
        );
      });
    }
    return t;
  }

  /** Options of the server's secure context (read from the files each time). */
  secureOptions(): { key: Buffer; cert: Buffer; ca: Buffer; crl?: Buffer } {
    return {
      key: fs.readFileSync(this.files.key),
      cert: fs.readFileSync(this.files.cert),
      ca: fs.readFileSync(this.files.ca),
      ...(this.crl ? { crl: fs.readFileSync(this.files.crl) } : {}),
    };
  }

  /** Follows the server's connections, to cut those a new CRL revokes. */
  attach(server: tls.Server): void {
    this.server = server;
    server.on('secureConnection', (s: TLSSocket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
  }

  /** Checks now and every hour whether the certificate is due for renewal. */
  start(): void {
    const check = (): void => {
      this.serial(() => this.ensureRenewal(false)).catch((err: unknown) =>
        this.log.error({ err: messageOf(err) }, 'cannot make a certificate renewal request'),
      );
    };
    check();
    this.timer = setInterval(check, CHECK_EVERY_MS);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private reload(): void {
    this.server?.setSecureContext(this.secureOptions());
  }

  certificateView(): CertificateView {
    const nb = new Date(this.cert.validFrom);
    const na = new Date(this.cert.validTo);
    return {
      serial: normSerial(this.cert.serialNumber),
      notBefore: nb.toISOString(),
      notAfter: na.toISOString(),
      renewAt: renewAt(nb, na).toISOString(),
      renewalPending: fs.existsSync(this.renewCsr),
    };
  }

  async view(): Promise<TlsView> {
    const csr = await fsp.readFile(this.renewCsr, 'utf8').catch(() => null);
    return {
      certificate: this.certificateView(),
      caFingerprint: caFingerprint(await fsp.readFile(this.files.ca, 'utf8')),
      crl: this.crl
        ? {
            number: this.crl.number.toString(),
            lastUpdate: this.crl.lastUpdate.toISOString(),
            nextUpdate: this.crl.nextUpdate?.toISOString() ?? null,
            revoked: this.crl.revoked.length,
          }
        : null,
      renewal: csr ? { csr, createdAt: (await fsp.stat(this.renewCsr)).mtime.toISOString() } : null,
    };
  }

  /** PUT /v1/domain/crl: a CRL signed by our CA, not older than the one installed. */
  putCrl(pem: string): Promise<TlsView> {
    return this.serial(async () => {
      const info = await readCrl(pem, await fsp.readFile(this.files.ca, 'utf8'));
      if (this.crl && info.number < this.crl.number)
        throw new InvalidInputError(
          `Cannot install the revocation list: it is number ${info.number}, ` +
            `older than the installed ${this.crl.number}; push the domain's current CRL ('ferry domain push-crl')`,
        );
      await writeAtomic(this.files.crl, pemBlocks(pem, 'X509 CRL').join(''), 0o644);
      this.crl = info;
      this.reload();
      const revoked = new Set(info.revoked);
      let cut = 0;
      for (const s of this.sockets) {
        const serial = s.getPeerCertificate().serialNumber;
        if (serial && revoked.has(normSerial(serial))) {
          s.destroy();
          cut++;
        }
      }
      if (revoked.has(normSerial(this.cert.serialNumber)))
        this.log.warn("the new revocation list revokes this host's own certificate: other hosts will refuse it");
      this.log.info(
        { crlNumber: info.number.toString(), revoked: info.revoked.length, cut },
        'revocation list installed',
      );
      return this.view();
    });
  }

  private async ensureRenewal(force: boolean): Promise<void> {
    if (await exists(this.renewCsr)) return;
    const due = renewAt(new Date(this.cert.validFrom), new Date(this.cert.validTo));
    if (!force && Date.now() < due.getTime()) return;
    // A key left without its request (a crash between the two) is useless: start again.
    await fsp.rm(this.renewKey, { force: true });
    const { ips, dns } = certAltNames(this.cert);
    const others = dns.filter((d) => d !== this.host.name);
    const address = ips[0] ?? others[0];
    if (!address)
      throw new FerryError(
        'E_RENEWAL',
        `Cannot make a renewal request for '${this.host.name}': its certificate names no address; ` +
          `enrol it again ('ferry host init')`,
      );
    await makeRequest({
      dir: this.files.renewDir,
      name: this.host.name,
      address,
      port: this.host.port,
      extraIps: [...ips, ...others].filter((a) => a !== address),
    });
    this.log.info({ notAfter: this.cert.validTo }, "certificate renewal request made; 'ferry domain renew' signs it");
  }

  /** POST /v1/domain/renewal: a request now if none is pending (force: before it is due). */
  requestRenewal(force: boolean): Promise<TlsView> {
    return this.serial(async () => {
      await this.ensureRenewal(force);
      return this.view();
    });
  }

  /** PUT /v1/domain/certificate: checks the renewed certificate and swaps key and certificate. */
  installRenewed(bundle: string): Promise<TlsView> {
    return this.serial(async () => {
      const keyPem = await fsp.readFile(this.renewKey, 'utf8').catch(() => null);
      if (!keyPem || !(await exists(this.renewCsr)))
        throw new NotFoundError(
          'E_RENEWAL_NOT_FOUND',
          `Cannot install a renewed certificate on '${this.host.name}': it has no pending renewal request; ` +
            `make one with 'ferry domain renew --host ${this.host.name} --force'`,
        );
      const [leafPem] = pemBlocks(bundle, 'CERTIFICATE');
      if (!leafPem)
        throw new InvalidInputError('Cannot install the renewed certificate: the body holds no PEM certificate');
      const caPem = await fsp.readFile(this.files.ca, 'utf8');
      const leaf = checkHostCertificate(leafPem, { name: this.host.name, keyPem, caPem });
      if (this.crl?.revoked.includes(normSerial(leaf.serialNumber)))
        throw new InvalidInputError(`Cannot install certificate ${leaf.serialNumber}: the domain's CRL revokes it`);
      const old = normSerial(this.cert.serialNumber);
      await writeAtomic(this.renewCert, leafPem);
      // From here a crash is finished by open(): key first, then certificate.
      await fsp.rename(this.renewKey, this.files.key);
      await fsp.rename(this.renewCert, this.files.cert);
      await fsp.rm(this.renewCsr, { force: true });
      this.cert = leaf;
      this.reload();
      this.log.info({ old, serial: normSerial(leaf.serialNumber), notAfter: leaf.validTo }, 'certificate renewed');
      return this.view();
    });
  }
}
