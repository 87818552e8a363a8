// `ferry domain …` on the admin machine: the CA, signing hosts' requests (their keys stay
// on the hosts), join tokens, revocation and renewal.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import { FerryError, InvalidInputError, messageOf } from '../../errors.js';
import type { DomainInfo } from '../../domain/ca.js';
import type { SignedHost } from '../../domain/signer.js';
import type { Context, GlobalOpts } from '../context.js';
import { printJson, printTable } from '../output.js';
import { name, positiveInt } from '../parse.js';
import { DEFAULT_HOST_DAYS } from '../../domain/lifetimes.js';

type Cmd = { optsWithGlobals(): GlobalOpts };

/** The PKI, the context files and the agents' client: loaded when a domain command runs, not for --help. */
async function pki() {
  const [actions, client, ca, signer, store, x509, token, context] = await Promise.all([
    import('../../api/actions.js'),
    import('../../api/client.js'),
    import('../../domain/ca.js'),
    import('../../domain/signer.js'),
    import('../../domain/store.js'),
    import('../../domain/x509.js'),
    import('../../domain/token.js'),
    import('../context.js'),
  ]);
  return { ...actions, ...client, ...ca, ...signer, ...store, ...x509, ...token, ...context };
}

/** The context in use, if there is one (a lab, --context, FERRY_CONTEXT or the default file). */
async function contextOrNull(g: GlobalOpts): Promise<Context | null> {
  const { contextFileOf, loadContext } = await pki();
  if (g.context || g.lab || process.env.FERRY_LAB || fs.existsSync(contextFileOf(g))) return loadContext(g);
  return null;
}

/** The domain: --dir, else the context's domain folder, else ~/.config/ferry/domain. */
async function domainOf(dir: string | undefined, g: GlobalOpts): Promise<{ domain: DomainInfo; ctx: Context | null }> {
  const { defaultDomainDir, loadDomain } = await pki();
  const ctx = await contextOrNull(g);
  const d = dir ? path.resolve(dir) : (ctx?.domainDir ?? defaultDomainDir());
  return { domain: await loadDomain(d), ctx };
}

async function readRequest(file: string): Promise<string> {
  if (file === '-') {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }
  return fsp.readFile(path.resolve(file), 'utf8').catch((err: unknown) => {
    throw new InvalidInputError(
      `Cannot read the request ${file}: ${messageOf(err)}; give the file 'ferry host init' wrote`,
    );
  });
}

/** Records a signed host in the context file (the lab keeps its own list). */
async function addToContext(ctx: Context | null, s: SignedHost): Promise<string | null> {
  const { readContextFile, writeContextFile } = await pki();
  if (!ctx?.file) return null;
  const c = await readContextFile(ctx.file);
  c.hosts = [...c.hosts.filter((h) => h.name !== s.name), { name: s.name, endpoint: s.endpoint }].sort((a, b) =>
    a.name.localeCompare(b.name),
  );
  await writeContextFile(ctx.file, c);
  return ctx.file;
}

interface PushResult {
  host: string;
  ok: boolean;
  error?: string;
}

/** Pushes the CRL to hosts; one failure does not stop the others. */
async function pushCrl(ctx: Context, hosts: string[], crl: string): Promise<PushResult[]> {
  const { actions, AgentClient } = await pki();
  return Promise.all(
    hosts.map(async (h) => {
      const ep = ctx.hosts.find((x) => x.name === h);
      if (!ep) return { host: h, ok: false, error: `it is not in ${ctx.source}` };
      const c = new AgentClient({ endpoint: ep.endpoint, host: h, credentials: ctx.credentials });
      try {
        await c.call(actions.domainCrlPut, { body: crl }, { timeoutMs: 20_000 });
        return { host: h, ok: true };
      } catch (err) {
        return { host: h, ok: false, error: messageOf(err) };
      } finally {
        c.close();
      }
    }),
  );
}

function failedPushes(results: PushResult[], what: string): void {
  const bad = results.filter((r) => !r.ok);
  const which = bad.map((b) => `${b.host} (${b.error ?? 'failed'})`).join('; ');
  if (bad.length)
    throw new FerryError(
      'E_CRL_NOT_PUSHED',
      `Cannot push the revocation list to ${which}: ${what}; ` +
        `run 'ferry domain push-crl' when ${bad.length > 1 ? 'they answer' : 'it answers'}`,
      { context: { hosts: bad.map((b) => b.host) } },
    );
}

function needContext(ctx: Context | null, what: string): Context {
  if (!ctx)
    throw new FerryError(
      'E_USAGE',
      `Cannot ${what}: no context names the hosts; ` +
        `use the context 'ferry domain init' wrote (or --context FILE, --lab DIR)`,
      {},
    );
  return ctx;
}

export function registerDomain(program: Command): void {
  const domain = program.command('domain').description('the certificate authority hosts and admins trust');

  domain
    .command('init')
    .argument('[dir]', 'only create a CA in DIR (no credential, no context), as labs do')
    .option('--dir <dir>', 'the domain folder (default ~/.config/ferry/domain)')
    .option('--name <name>', 'domain name', 'ferry')
    .option('--admin <name>', "the admin credential's name", 'admin')
    .option('--json', 'JSON')
    .description('create a domain: CA, an admin credential, and the context the CLI uses by default')
    .action(async (bare, o, cmd) => {
      const {
        initDomain,
        currentCrl,
        issueAdminCredential,
        caFingerprint,
        contextFileOf,
        defaultDomainDir,
        writeContextFile,
      } = await pki();
      if (bare) {
        const d = await initDomain(path.resolve(bare), { name: o.name });
        process.stdout.write(
          `domain ${d.name} (${d.id}) created in ${d.dir}\nCA fingerprint (SHA-256): ` +
            `${caFingerprint(await fsp.readFile(d.caCert, 'utf8'))}\n`,
        );
        return;
      }
      const g = (cmd as Cmd).optsWithGlobals();
      const dir = path.resolve(o.dir ?? defaultDomainDir());
      const ctxFile = contextFileOf(g);
      if (fs.existsSync(ctxFile))
        throw new FerryError(
          'E_CONTEXT_EXISTS',
          `Cannot create a domain: the context ${ctxFile} exists already (another domain's hosts); ` +
            `set FERRY_CONTEXT=OTHER.json (or --context) to keep both, or remove it`,
          {},
        );
      const fresh = !fs.existsSync(dir) || fs.readdirSync(dir).length === 0;
      const d = await initDomain(dir, { name: o.name });
      try {
        const admin = await issueAdminCredential(d, o.admin);
        await currentCrl(d);
        await writeContextFile(ctxFile, { domain: dir, ca: d.caCert, cert: admin.cert, key: admin.key, hosts: [] });
        const fp = caFingerprint(await fsp.readFile(d.caCert, 'utf8'));
        if (o.json) printJson({ id: d.id, name: d.name, dir, caFingerprint: fp, context: ctxFile, admin: admin.cert });
        else
          process.stdout.write(
            [
              `domain ${d.name} (${d.id}) created in ${dir}`,
              `CA fingerprint (SHA-256): ${fp}`,
              `admin credential: ${admin.cert} (valid until ${admin.notAfter})`,
              `context: ${ctxFile} (used by default)`,
              '',
              'enrol a host: on it run   ferry host init NAME --address ADDR > NAME.csr',
              '              here run    ferry domain sign NAME.csr --out NAME.crt',
              '              on it run   ferry host install-cert NAME.crt',
              'or in one token: here     ferry domain token NAME --address ADDR',
              '',
            ].join('\n'),
          );
      } catch (err) {
        if (fresh) await fsp.rm(dir, { recursive: true, force: true }); // nothing half-made
        throw err;
      }
    });

  domain
    .command('show')
    .option('--dir <dir>', 'the domain folder')
    .option('--json', 'JSON')
    .description('the domain, its CA fingerprint and its enrolled hosts')
    .action(async (o, cmd) => {
      const { readInventory, caFingerprint } = await pki();
      const { domain: d } = await domainOf(o.dir, (cmd as Cmd).optsWithGlobals());
      const inv = await readInventory(d.dir);
      const fp = caFingerprint(await fsp.readFile(d.caCert, 'utf8'));
      if (o.json) {
        printJson({ id: d.id, name: d.name, dir: d.dir, caFingerprint: fp, hosts: inv.hosts });
        return;
      }
      process.stdout.write(`domain ${d.name} (${d.id}) in ${d.dir}\nCA fingerprint (SHA-256): ${fp}\n\n`);
      printTable(
        ['HOST', 'STATE', 'ENDPOINT', 'SERIAL', 'VALID UNTIL'],
        inv.hosts.map((h) => {
          const c = h.certificates.filter((x) => !x.revokedAt).at(-1) ?? h.certificates.at(-1);
          return [h.name, h.state, `https://${h.address}:${h.port}`, c?.serial, c?.notAfter];
        }),
      );
    });

  domain
    .command('sign')
    .argument('<request>', "a host's certificate request ('ferry host init' printed it); - reads stdin")
    .option('--out <file>', 'write the certificate (and CA) here instead of stdout')
    .option('--dir <dir>', 'the domain folder')
    .option('--days <n>', `certificate lifetime (default ${DEFAULT_HOST_DAYS})`, positiveInt('--days', 365))
    .option('--port <port>', "the agent's port when the request does not say", positiveInt('--port', 65535))
    .option('--renew', 'give an enrolled host a new certificate')
    .option('--json', 'print the result as JSON (the certificate only with --out)')
    .description("sign a host's request: a short-lived certificate; the host joins the context")
    .action(async (file, o, cmd) => {
      const { signHostRequest } = await pki();
      const { domain: d, ctx } = await domainOf(o.dir, (cmd as Cmd).optsWithGlobals());
      const csr = await readRequest(file);
      const out = o.out ? path.resolve(o.out) : null;
      if (out) {
        await fsp.access(path.dirname(out), fs.constants.W_OK).catch(() => {
          throw new InvalidInputError(`Cannot write ${out}: its folder does not exist or is not writable`);
        });
      }
      if (ctx?.file) await fsp.access(ctx.file, fs.constants.W_OK);
      const s = await signHostRequest(d, csr, {
        ...(o.days ? { days: o.days } : {}),
        ...(o.port ? { port: o.port } : {}),
        renew: !!o.renew,
      });
      if (out) await fsp.writeFile(out, s.bundle, { mode: 0o644 });
      const ctxFile = await addToContext(ctx, s);
      const summary = {
        name: s.name,
        endpoint: s.endpoint,
        serial: s.serial,
        notAfter: s.notAfter,
        caFingerprint: s.caFingerprint,
        token: s.tokenId,
        out,
        context: ctxFile,
      };
      if (o.json && out) printJson(summary);
      else {
        if (!out) process.stdout.write(s.bundle);
        (out ? process.stdout : process.stderr).write(
          `signed ${s.name} (${s.endpoint}): serial ${s.serial}, valid until ${s.notAfter}` +
            (s.tokenId ? `, join token ${s.tokenId} used up\n` : '\n') +
            (ctxFile ? `added ${s.name} to ${ctxFile}\n` : '') +
            `on the host: ferry host install-cert ${out ?? 'FILE'}   (CA fingerprint ${s.caFingerprint})\n`,
        );
      }
    });

  domain
    .command('token')
    .argument('<name>', 'the host to enrol', name('NAME'))
    .requiredOption('--address <addr>', 'the address the host will be reached at')
    .option('--port <port>', "the agent's port", positiveInt('--port', 65535), 7443)
    .option('--ttl <duration>', 'how long the token is valid (30m, 1h, 2d; at most 7d)', '1h')
    .option('--dir <dir>', 'the domain folder')
    .option('--json', 'JSON')
    .description("a one-time join token for 'ferry host join' (pins the CA, proves the request)")
    .action(async (n, o, cmd) => {
      const { createToken, parseTtl } = await pki();
      const { domain: d } = await domainOf(o.dir, (cmd as Cmd).optsWithGlobals());
      const t = await createToken(d, { name: n, address: o.address, port: o.port, ttlMs: parseTtl(o.ttl) });
      if (o.json) {
        printJson(t);
        return;
      }
      process.stdout.write(t.token + '\n');
      process.stderr.write(
        `join token ${t.id} for ${n} at ${o.address}:${o.port}, valid until ${t.expiresAt}, usable once\n` +
          `on the host: ferry host join TOKEN > ${n}.csr; here: ferry domain sign ${n}.csr --out ${n}.crt; ` +
          `on the host: ferry host install-cert ${n}.crt\n`,
      );
    });

  domain
    .command('revoke')
    .argument('<host>', 'the host to take out of the domain')
    .option('--serial <serial>', 'revoke only this certificate (an old key that leaked); the host stays enrolled')
    .option('--dir <dir>', 'the domain folder')
    .option('--json', 'JSON')
    .description("revoke a host's certificate(s) and push the revocation list to every host at once")
    .action(async (h, o, cmd) => {
      const { revokeHost, readContextFile, writeContextFile } = await pki();
      const g = (cmd as Cmd).optsWithGlobals();
      const { domain: d, ctx } = await domainOf(o.dir, g);
      const r = await revokeHost(d, h, { ...(o.serial ? { serial: o.serial } : {}) });
      let hosts = ctx?.hosts.map((x) => x.name) ?? [];
      if (ctx?.file && r.host.state === 'revoked') {
        const c = await readContextFile(ctx.file);
        c.hosts = c.hosts.filter((x) => x.name !== h);
        await writeContextFile(ctx.file, c);
        hosts = hosts.filter((x) => x !== h);
      }
      const pushed = ctx ? await pushCrl(ctx, hosts, r.crl) : [];
      if (o.json) printJson({ host: h, state: r.host.state, serials: r.serials, pushed });
      else
        process.stdout.write(
          `${h}: revoked ${r.serials.length ? r.serials.join(', ') : 'nothing new (revoked already)'}; ` +
            `revocation list ${path.join(d.dir, 'crl.pem')}\n` +
            (pushed.length
              ? `pushed to ${
                  pushed
                    .filter((p) => p.ok)
                    .map((p) => p.host)
                    .join(', ') || 'no host'
                }\n`
              : ''),
        );
      failedPushes(pushed, 'they still accept the revoked certificate');
    });

  domain
    .command('push-crl')
    .option('--host <host>', 'only this host')
    .option('--dir <dir>', 'the domain folder')
    .description("push the domain's revocation list to every host of the context")
    .action(async (o, cmd) => {
      const { currentCrl } = await pki();
      const { domain: d, ctx: c } = await domainOf(o.dir, (cmd as Cmd).optsWithGlobals());
      const ctx = needContext(c, 'push the revocation list');
      const hosts = o.host ? [o.host] : ctx.hosts.map((x) => x.name);
      for (const h of hosts)
        if (!ctx.hosts.some((x) => x.name === h))
          throw new FerryError(
            'E_HOST_NOT_FOUND',
            `Cannot push the revocation list to '${h}': it is not in ${ctx.source}`,
            {},
          );
      const res = await pushCrl(ctx, hosts, await currentCrl(d));
      process.stdout.write(
        `revocation list pushed to ${
          res
            .filter((r) => r.ok)
            .map((r) => r.host)
            .join(', ') || 'no host'
        }\n`,
      );
      failedPushes(res, 'they keep the list they had');
    });

  domain
    .command('renew')
    .option('--host <host>', 'only this host')
    .option('--force', 'renew now, before 2/3 of the lifetime has passed')
    .option('--days <n>', `lifetime of the new certificates (default ${DEFAULT_HOST_DAYS})`, positiveInt('--days', 365))
    .option('--dir <dir>', 'the domain folder')
    .option('--json', 'JSON')
    .description("sign the hosts' pending renewal requests and push the certificates (run it from a timer)")
    .action(async (o, cmd) => {
      const { actions, AgentClient, currentCrl, signHostRequest, readCrl } = await pki();
      const { domain: d, ctx: c } = await domainOf(o.dir, (cmd as Cmd).optsWithGlobals());
      const ctx = needContext(c, 'renew certificates');
      const hosts = o.host ? [o.host] : ctx.hosts.map((x) => x.name);
      const crl = await currentCrl(d);
      const caPem = await fsp.readFile(d.caCert, 'utf8');
      const crlNumber = (await readCrl(crl, caPem)).number;
      const results = await Promise.all(
        hosts.map(async (h) => {
          const ep = ctx.hosts.find((x) => x.name === h);
          if (!ep) return { host: h, ok: false, error: `it is not in ${ctx.source}` };
          const cl = new AgentClient({ endpoint: ep.endpoint, host: h, credentials: ctx.credentials });
          try {
            let v = await cl.call(actions.domainTls, {}, { timeoutMs: 20_000 });
            const crlPushed = !v.crl || BigInt(v.crl.number) < crlNumber;
            if (crlPushed) await cl.call(actions.domainCrlPut, { body: crl }, { timeoutMs: 20_000 });
            if (!v.renewal && o.force) v = await cl.call(actions.domainRenewal, { body: { force: true } });
            if (!v.renewal)
              return {
                host: h,
                ok: true,
                renewed: false,
                crlPushed,
                serial: v.certificate.serial,
                notAfter: v.certificate.notAfter,
                renewAt: v.certificate.renewAt,
              };
            const s = await signHostRequest(d, v.renewal.csr, {
              renew: true,
              expectName: h,
              ...(o.days ? { days: o.days } : {}),
            });
            const after = await cl.call(actions.domainCertificatePut, { body: s.bundle }, { timeoutMs: 20_000 });
            return {
              host: h,
              ok: true,
              renewed: true,
              crlPushed,
              oldSerial: v.certificate.serial,
              serial: after.certificate.serial,
              notAfter: after.certificate.notAfter,
              renewAt: after.certificate.renewAt,
            };
          } catch (err) {
            return { host: h, ok: false, error: messageOf(err) };
          } finally {
            cl.close();
          }
        }),
      );
      if (o.json) printJson(results);
      else
        for (const r of results) {
          if (!r.ok) continue;
          process.stdout.write(
            r.renewed
              ? `${r.host}: renewed (serial ${r.oldSerial} → ${r.serial}), valid until ${r.notAfter}\n`
              : `${r.host}: valid until ${r.notAfter}, renewal from ${r.renewAt}\n`,
          );
        }
      const bad = results.filter((r) => !r.ok);
      if (bad.length)
        throw new FerryError(
          'E_RENEW_FAILED',
          `Cannot renew ${bad.map((b) => `${b.host} (${b.error ?? 'failed'})`).join('; ')}; the others are done; ` +
            "run 'ferry domain renew' again when they answer",
          {},
        );
    });

  domain
    .command('issue')
    .argument('<role>', 'admin (hosts enrol with ferry host init + ferry domain sign)')
    .argument('<name>', 'admin name', name('NAME'))
    .option('--dir <dir>', 'the domain folder')
    .option('--out <dir>', 'where to write NAME.crt and NAME.key (default DOMAIN/admins)')
    .option('--days <n>', 'lifetime in days (default 365)', positiveInt('--days', 3650))
    .description('issue another admin credential (key made here, on the admin machine)')
    .action(async (role, n, o, cmd) => {
      const { issueAdminCredential } = await pki();
      if (role === 'host')
        throw new InvalidInputError(
          `Cannot issue a host certificate here: a host's key is made on the host and never copied; ` +
            `run 'ferry host init ${n} --address ADDR' on it, ` +
            `then 'ferry domain sign REQUEST' here (or 'ferry domain token ${n} --address ADDR')`,
        );
      if (role !== 'admin') throw new InvalidInputError(`Cannot issue a '${role}' certificate: the role is admin`);
      const { domain: d } = await domainOf(o.dir, (cmd as Cmd).optsWithGlobals());
      const c = await issueAdminCredential(d, n, {
        ...(o.out ? { dir: path.resolve(o.out) } : {}),
        ...(o.days ? { days: o.days } : {}),
      });
      process.stdout.write(`admin credential ${n}: ${c.cert} (key ${c.key}, CA ${c.ca}), valid until ${c.notAfter}\n`);
    });
}
