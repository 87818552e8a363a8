// Enrolment, revocation and renewal through bin/ferry, as an admin and a host would run them:
// a fresh domain, a host enrolled with the three commands (its key made in its own folder),
// its agent answering the admin; the refusals; then on a 3-host lab: renewal without a
// restart, a revoked certificate refused by the agents at the handshake and by QEMU's NBD
// server, and a live move afterwards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { ferry, ferryOk, type CliResult } from './cli.js';
import { useLab, hostData, waitProbe, waitMigration } from './lab.js';
import { cliCommand } from '../../guest/paths.js';
import { AgentClient } from '../../src/api/client.js';
import { actions } from '../../src/api/actions.js';
import { peerActions } from '../../src/api/peer-actions.js';
import { qemuTlsDir } from '../../src/migration/tls.js';
import { normSerial } from '../../src/domain/x509.js';
import { sleep } from '../../src/util/exec.js';
import type { HostView, VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';

/** Every file under `dir` with its SHA-256 (missing folder: empty). */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile())
        out.set(
          p,
          crypto
            .createHash('sha256')
            .update(await fsp.readFile(p))
            .digest('hex'),
        );
    }
  };
  await walk(dir);
  return out;
}

/** Files under `root` (outside `except`) that hold the private key of `keyFile`, in any PEM form. */
async function keyCopies(root: string, keyFile: string, except: string[]): Promise<string[]> {
  const key = crypto.createPrivateKey(await fsp.readFile(keyFile));
  const der = key.export({ type: 'pkcs8', format: 'der' });
  const scalar = (key.export({ format: 'jwk' }) as { d: string }).d;
  const found: string[] = [];
  for (const f of (await snapshot(root)).keys()) {
    if (except.some((e) => f === e || f.startsWith(e + path.sep))) continue;
    const buf = await fsp.readFile(f);
    const text = buf.toString('utf8');
    let same = buf.includes(der) || text.includes(scalar);
    for (const m of text.match(/-----BEGIN (EC |)PRIVATE KEY-----[\s\S]*?-----END (EC |)PRIVATE KEY-----/g) ?? []) {
      const other = crypto.createPrivateKey(m).export({ format: 'jwk' }) as { d: string };
      if (other.d === scalar) same = true;
    }
    if (same) found.push(f);
  }
  return found;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** The serial a TLS server presents, or the error of the handshake. */
function handshake(
  port: number,
  creds: { ca: string; cert: string; key: string },
  host = '127.0.0.1',
): Promise<{ serial?: string; error?: string }> {
  return new Promise((resolve) => {
    const s = tls.connect({
      host,
      port,
      ca: fs.readFileSync(creds.ca),
      cert: fs.readFileSync(creds.cert),
      key: fs.readFileSync(creds.key),
      checkServerIdentity: () => undefined,
    });
    s.once('secureConnect', () => {
      const serial = normSerial(s.getPeerCertificate().serialNumber);
      // TLS 1.3: the server checks our certificate after the client's handshake ends; a refusal
      // shows as the connection closing before an HTTP answer.
      s.write('GET /v1/host HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      let got = '';
      s.on('data', (d: Buffer) => (got += d.toString()));
      s.once('close', () => resolve(got.startsWith('HTTP/1.1') ? { serial } : { error: 'closed without an answer' }));
    });
    s.once('error', (e: Error) => resolve({ error: e.message }));
    s.setTimeout(10_000, () => s.destroy(new Error('timeout')));
  });
}

// ---- part 1: a fresh domain, a host enrolled by hand ----

let tmp = '';
let agent: ChildProcess | null = null;
const admin = (): NodeJS.ProcessEnv => ({
  XDG_CONFIG_HOME: path.join(tmp, 'admin', 'config'),
  FERRY_LAB: '',
  FERRY_CONTEXT: '',
});
const run = (args: string[], env: NodeJS.ProcessEnv = admin()): Promise<CliResult> => ferry(args, { env });
async function ok(args: string[], env: NodeJS.ProcessEnv = admin()): Promise<string> {
  const r = await run(args, env);
  assert.equal(r.code, 0, `ferry ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}
const hostDirs = (n: string): { root: string; config: string; tls: string; data: string; flags: string[] } => {
  const root = path.join(tmp, 'machines', n);
  const d = {
    root,
    config: path.join(root, 'etc', 'ferry', 'agent.json'),
    tls: path.join(root, 'etc', 'ferry', 'tls'),
    data: path.join(root, 'var', 'lib', 'ferry'),
  };
  return { ...d, flags: ['--config', d.config, '--tls-dir', d.tls, '--data-dir', d.data] };
};

before(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'ferry-enrol-'));
});
after(async () => {
  if (agent?.pid) {
    try {
      process.kill(agent.pid, 'SIGTERM');
    } catch {
      /* gone */
    }
    await new Promise((r) => agent?.once('exit', r));
  }
  await fsp.rm(tmp, { recursive: true, force: true });
});

test('three commands enrol a host into a fresh domain; its agent answers the admin; no copy of its key', async () => {
  const init = JSON.parse(await ok(['domain', 'init', '--json'])) as { caFingerprint: string; context: string };
  assert.equal(init.context, path.join(tmp, 'admin', 'config', 'ferry', 'context.json'));
  const h1 = hostDirs('h1');
  const port = await freePort();
  const csrFile = path.join(tmp, 'h1.csr');
  await fsp.writeFile(
    csrFile,
    await ok(['host', 'init', 'h1', '--address', '127.0.0.1', '--port', String(port), ...h1.flags]),
  );
  assert.equal((await fsp.stat(path.join(h1.tls, 'host.key'))).mode & 0o777, 0o600);
  const config = JSON.parse(await fsp.readFile(h1.config, 'utf8')) as Record<string, unknown>;
  assert.deepEqual(config, {
    name: 'h1',
    listen: `127.0.0.1:${port}`,
    dataDir: h1.data,
    migrationAddress: '127.0.0.1',
    tlsDir: h1.tls,
    qemu: { user: 'ferry-qemu' }, // made by scripts/setup, as the package makes it
  });
  const signed = JSON.parse(await ok(['domain', 'sign', csrFile, '--out', path.join(tmp, 'h1.crt'), '--json'])) as {
    serial: string;
    notAfter: string;
    endpoint: string;
  };
  assert.equal(signed.endpoint, `https://127.0.0.1:${port}`);
  const days = (Date.parse(signed.notAfter) - Date.now()) / 86_400_000;
  assert.ok(days > 29 && days <= 30, `a 30-day certificate, got ${days.toFixed(1)} days`);
  const installed = await ok(['host', 'install-cert', path.join(tmp, 'h1.crt'), '--config', h1.config]);
  assert.match(installed, new RegExp(`CA fingerprint \\(SHA-256\\): ${init.caFingerprint}`));

  // The agent with the signed certificate; the admin's CLI uses the default context.
  const [node, ...cli] = cliCommand();
  agent = spawn(
    node,
    [...cli, 'agent', '--name', 'h1', '--data', h1.data, '--listen', `127.0.0.1:${port}`, '--tls-dir', h1.tls],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, FERRY_ACCEL: 'tcg' } },
  );
  let show: HostView | null = null;
  for (let i = 0; i < 150 && !show; i++) {
    const r = await run(['host', 'show', 'h1', '--json']);
    if (r.code === 0) show = JSON.parse(r.stdout) as HostView;
    else await sleep(200);
  }
  assert.ok(show, 'the agent answers the admin through the default context');
  assert.equal(show.name, 'h1');
  assert.equal(show.certificate?.serial, signed.serial);
  assert.equal(show.certificate.notAfter, new Date(signed.notAfter).toISOString());
  assert.match(await ok(['host', 'show', 'h1']), /certificate +serial [0-9A-F]+, valid until .* \(29 days\)/);

  // The key exists once: in the host's TLS folder. Not in the domain, not in the context folder.
  const copies = await keyCopies(tmp, path.join(h1.tls, 'host.key'), [path.join(h1.tls, 'host.key')]);
  assert.deepEqual(copies, [], 'no copy of the host key outside its TLS folder');
});

test('refused: an enrolled name, a certificate from another domain, a reused, expired or misnamed token', async () => {
  const adminDir = path.join(tmp, 'admin');
  const domainBefore = await snapshot(adminDir);
  // 1. The same name again (a second machine calling itself h1).
  const twin = hostDirs('h1-twin');
  const twinCsr = await ok(['host', 'init', 'h1', '--address', '127.0.0.2', ...twin.flags]);
  await fsp.writeFile(path.join(tmp, 'twin.csr'), twinCsr);
  const dup = await run(['domain', 'sign', path.join(tmp, 'twin.csr'), '--out', path.join(tmp, 'twin.crt')]);
  assert.notEqual(dup.code, 0);
  assert.match(dup.stderr, /a host of that name is enrolled already.*--renew.*ferry domain revoke h1/);
  assert.ok(!fs.existsSync(path.join(tmp, 'twin.crt')));
  assert.deepEqual(await snapshot(adminDir), domainBefore, 'domain and context unchanged');

  // 2. Another domain signs a request of a host that pinned ours.
  const fp = (JSON.parse(await ok(['domain', 'show', '--json'])) as { caFingerprint: string }).caFingerprint;
  const other = { ...admin(), FERRY_CONTEXT: path.join(tmp, 'other', 'context.json') };
  await ok(['domain', 'init', '--dir', path.join(tmp, 'other', 'domain')], other);
  const h2 = hostDirs('h2');
  await fsp.writeFile(
    path.join(tmp, 'h2.csr'),
    await ok(['host', 'init', 'h2', '--address', '127.0.0.3', '--ca-fingerprint', fp, ...h2.flags]),
  );
  await ok(['domain', 'sign', path.join(tmp, 'h2.csr'), '--out', path.join(tmp, 'h2-foreign.crt')], other);
  const h2Before = await snapshot(h2.root);
  const foreign = await run(['host', 'install-cert', path.join(tmp, 'h2-foreign.crt'), '--config', h2.config]);
  assert.notEqual(foreign.code, 0);
  assert.match(foreign.stderr, /from another domain.*signed on the admin machine of that domain/);
  assert.deepEqual(await snapshot(h2.root), h2Before, "the host's files unchanged");
  // ...and the same for h1, already enrolled: a foreign certificate for its key is refused.
  const h1 = hostDirs('h1');
  const h1Before = await snapshot(h1.root);
  const h1Foreign = await run(['host', 'install-cert', path.join(tmp, 'h2-foreign.crt'), '--config', h1.config]);
  assert.notEqual(h1Foreign.code, 0);
  assert.deepEqual(await snapshot(h1.root), h1Before);

  // 3. Join tokens.
  const token = (await ok(['domain', 'token', 'h3', '--address', '127.0.0.4', '--ttl', '1h'])).trim();
  const h3 = hostDirs('h3');
  await fsp.writeFile(path.join(tmp, 'h3.csr'), await ok(['host', 'join', token, ...h3.flags]));
  await ok(['domain', 'sign', path.join(tmp, 'h3.csr'), '--out', path.join(tmp, 'h3.crt')]);
  await ok(['host', 'install-cert', path.join(tmp, 'h3.crt'), '--config', h3.config]);
  // Reused on another machine: the request is made there, the admin refuses it.
  const copy = hostDirs('h3-copy');
  await fsp.writeFile(path.join(tmp, 'h3-copy.csr'), await ok(['host', 'join', token, ...copy.flags]));
  const afterH3 = await snapshot(adminDir);
  const reused = await run(['domain', 'sign', path.join(tmp, 'h3-copy.csr')]);
  assert.notEqual(reused.code, 0);
  assert.match(reused.stderr, /join token \(\w+\) was used already.*create a new one with 'ferry domain token h3/);
  assert.deepEqual(await snapshot(adminDir), afterH3);
  // Expired: the host refuses it before writing anything.
  const short = (await ok(['domain', 'token', 'h4', '--address', '127.0.0.5', '--ttl', '1s'])).trim();
  await sleep(1500);
  const h4 = hostDirs('h4');
  const expired = await run(['host', 'join', short, ...h4.flags]);
  assert.notEqual(expired.code, 0);
  assert.match(expired.stderr, /expired at .*ferry domain token h4 --address 127.0.0.5/);
  assert.ok(!fs.existsSync(h4.root), 'nothing written for an expired token');
  // Misnamed.
  const t5 = (await ok(['domain', 'token', 'h5', '--address', '127.0.0.6'])).trim();
  const wrong = await run(['host', 'join', t5, '--name', 'h6', ...hostDirs('h6').flags]);
  assert.notEqual(wrong.code, 0);
  assert.match(wrong.stderr, /the token is for host 'h5'/);
  assert.ok(!fs.existsSync(hostDirs('h6').root));
  // The context lists exactly the hosts enrolled.
  const ctx = JSON.parse(await fsp.readFile(path.join(adminDir, 'config', 'ferry', 'context.json'), 'utf8')) as {
    hosts: Array<{ name: string }>;
  };
  assert.deepEqual(
    ctx.hosts.map((h) => h.name),
    ['h1', 'h3'],
  );
});

// ---- part 2: renewal and revocation on a lab (enrolled by request and signature too) ----

const L = useLab(3);
const creds = (host: string): { ca: string; cert: string; key: string } => {
  const t = path.join(hostData(L, host), 'tls');
  return { ca: path.join(t, 'ca.crt'), cert: path.join(t, 'host.crt'), key: path.join(t, 'host.key') };
};
const portOf = (host: string): number => Number(new URL(L.status.hosts.find((h) => h.name === host)!.endpoint).port);
const adminCreds = (): { ca: string; cert: string; key: string } => {
  const d = path.join(L.lab, 'domain');
  return {
    ca: path.join(d, 'ca.crt'),
    cert: path.join(d, 'admins', 'admin.crt'),
    key: path.join(d, 'admins', 'admin.key'),
  };
};

test("the lab's hosts made their own keys: each exists only in its host's TLS folder", async () => {
  for (const h of L.status.hosts) {
    const tlsDir = path.join(h.dataDir, 'tls');
    assert.deepEqual(await keyCopies(L.lab, path.join(tlsDir, 'host.key'), [tlsDir]), [], `${h.name}'s key`);
  }
  assert.ok(!fs.existsSync(path.join(L.lab, 'domain', 'hosts')), 'no host keys beside the CA');
});

test('renewal swaps the certificate without a restart; open connections keep working', async () => {
  const before = await ferryOk<HostView>(['host', 'show', 'host-b', '--json'], { lab: L.lab });
  const pid = L.status.hosts.find((h) => h.name === 'host-b')!.agentPid;
  // An event stream opened before the swap.
  const client = new AgentClient({
    endpoint: `https://127.0.0.1:${portOf('host-b')}`,
    host: 'host-b',
    credentials: adminCreds(),
  });
  const ac = new AbortController();
  let events = '';
  const stream = client.stream('/v1/events', (c) => (events += c), { signal: ac.signal });
  await sleep(300);
  const r = await ferryOk<Array<{ host: string; renewed: boolean; oldSerial: string; serial: string }>>(
    ['domain', 'renew', '--host', 'host-b', '--force', '--json'],
    { lab: L.lab },
  );
  assert.equal(r[0]?.renewed, true);
  const [one] = r;
  assert.ok(before.certificate);
  assert.equal(one.oldSerial, before.certificate.serial);
  assert.notEqual(one.serial, before.certificate.serial);
  const after = await ferryOk<HostView>(['host', 'show', 'host-b', '--json'], { lab: L.lab });
  assert.equal(after.certificate?.serial, one.serial);
  assert.equal(
    (await handshake(portOf('host-b'), adminCreds())).serial,
    one.serial,
    'new handshakes get the new certificate',
  );
  assert.equal(
    (
      await ferryOk<{ hosts: Array<{ name: string; agentPid: number }> }>(['lab', 'status', '--json'], { lab: L.lab })
    ).hosts.find((h) => h.name === 'host-b')?.agentPid,
    pid,
  );
  await ferryOk(['host', 'set', 'host-b', '--max-live', '3'], { lab: L.lab });
  for (let i = 0; i < 50 && !events.includes('host.changed'); i++) await sleep(100);
  assert.match(events, /host\.changed/, 'the stream opened before the swap still delivers events');
  ac.abort();
  await stream.catch(() => undefined);
  client.close();
  assert.ok(
    !fs.existsSync(path.join(hostData(L, 'host-b'), 'tls', 'renew', 'host.key')),
    'the new key moved into place',
  );
});

test('a revoked certificate is refused at once: agents refuse the handshake, QEMU the NBD connection', async () => {
  // The attacker's copy of host-a's credentials, taken before host-a renews.
  const stolen = path.join(L.dir, 'stolen-a');
  await fsp.mkdir(stolen, { recursive: true });
  for (const [k, f] of Object.entries(creds('host-a'))) await fsp.copyFile(f, path.join(stolen, `${k}.pem`));
  const stolenCreds = {
    ca: path.join(stolen, 'ca.pem'),
    cert: path.join(stolen, 'cert.pem'),
    key: path.join(stolen, 'key.pem'),
  };
  assert.ok((await handshake(portOf('host-b'), stolenCreds)).serial, "before: host-a's certificate is let in");
  const [renewed] = await ferryOk<Array<{ oldSerial: string; serial: string }>>(
    ['domain', 'renew', '--host', 'host-a', '--force', '--json'],
    { lab: L.lab },
  );
  // A host's keep-alive connection opened before the revocation.
  const c = new AgentClient({
    endpoint: `https://127.0.0.1:${portOf('host-b')}`,
    host: 'host-b',
    credentials: creds('host-c'),
  });
  await c.call(actions.hostShow, {});
  const rv = await ferryOk<{ serials: string[]; pushed: Array<{ host: string; ok: boolean }> }>(
    ['domain', 'revoke', 'host-a', '--serial', renewed!.oldSerial, '--json'],
    { lab: L.lab },
  );
  assert.deepEqual(rv.serials, [renewed!.oldSerial]);
  assert.deepEqual(
    rv.pushed.map((p) => p.ok),
    [true, true, true],
  );
  for (const h of ['host-b', 'host-c'])
    assert.match(
      (await handshake(portOf(h), stolenCreds)).error ?? '',
      /closed|reset|disconnected|revoked/i,
      `${h} refuses the old key`,
    );
  assert.ok((await handshake(portOf('host-b'), creds('host-a'))).serial, "host-a's renewed certificate still works");

  // QEMU: a shared-nothing move host-a → host-b; its NBD export refuses the revoked certificate.
  assert.ok(fs.existsSync(path.join(hostData(L, 'host-b'), 'tls', 'ca.crl')));
  const vm = await ferryOk<VmView>(['vm', 'new', 'rv1', '--host', 'host-a', '--guest', 'probe', '--start', '--json'], {
    lab: L.lab,
  });
  await waitProbe(L, vm, 5);
  const moveArgs = ['move-vm', 'rv1', '--to', 'host-b', '--include-storage', '--bandwidth', '1', '--no-wait'];
  const id = (await ferryOk<string>(moveArgs, { lab: L.lab })).trim();
  await waitMigration(L, id, ['copying-storage']);
  assert.ok(
    fs.existsSync(path.join(hostData(L, 'host-b'), 'tls', 'qemu', 'ca-crl.pem')),
    "the CRL is in QEMU's TLS folder",
  );
  const admin = new AgentClient({
    endpoint: `https://127.0.0.1:${portOf('host-b')}`,
    host: 'host-b',
    credentials: adminCreds(),
  });
  const st = await admin.call(peerActions.status, { params: { id } });
  admin.close();
  const nbd = st.nbd;
  assert.ok(nbd);
  const probe = (dir: string): { ok: boolean; out: string } => {
    try {
      const out = execFileSync(
        'qemu-img',
        [
          'info',
          '--object',
          `tls-creds-x509,id=t0,endpoint=client,dir=${dir}`,
          '--image-opts',
          `driver=nbd,server.type=inet,server.host=${nbd.host},server.port=${nbd.port},` +
            'export=disk0,tls-creds=t0,tls-hostname=host-b',
        ],
        { stdio: 'pipe', timeout: 20_000 },
      ).toString();
      return { ok: true, out };
    } catch (err) {
      return { ok: false, out: String((err as { stderr?: Buffer }).stderr ?? err) };
    }
  };
  const stolenQemu = await qemuTlsDir({ ...stolenCreds }, path.join(L.dir, 'stolen-data'));
  const denied = probe(stolenQemu);
  assert.equal(denied.ok, false, 'the revoked certificate (CN host-a, the source) is refused by the NBD server');
  process.stderr.write(`NBD with the revoked certificate: ${denied.out.trim().split('\n').slice(-1).join('')}\n`);
  const allowed = probe(path.join(hostData(L, 'host-a'), 'tls', 'qemu'));
  assert.equal(allowed.ok, true, `host-a's current certificate is let in: ${allowed.out}`);
  await ferryOk(['migration', 'cancel', id], { lab: L.lab });

  // Revoke host-c entirely: its open connection is cut, new handshakes fail everywhere.
  await ferryOk(['domain', 'revoke', 'host-c'], { lab: L.lab });
  await assert.rejects(c.call(actions.hostShow, {}, { timeoutMs: 10_000 }), /disconnected|reset|socket|unreachable/i);
  c.close();
  for (const h of ['host-a', 'host-b'])
    assert.ok((await handshake(portOf(h), creds('host-c'))).error, `${h} refuses host-c`);

  // The domain still works: a live move host-a → host-b with the renewed certificates, CRL in place.
  const r = await ferryOk<MigrationRecord>(['move-vm', 'rv1', '--to', 'host-b', '--include-storage', '--json'], {
    lab: L.lab,
    timeoutMs: 300_000,
  });
  assert.equal(r.state, 'completed', JSON.stringify(r.error));
  await ferryOk(['vm', 'stop', 'rv1', '--force'], { lab: L.lab });
  await ferryOk(['vm', 'rm', 'rv1'], { lab: L.lab });
});
