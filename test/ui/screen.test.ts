// A VM's screen in the web console (noVNC through the console's websocket to the agent's VNC
// display), in Debian's Chromium against a real 2-host lab: the VM boots an empty disk, so
// SeaBIOS stays on its "No bootable device" screen with interrupts on and resets the machine
// on Ctrl-Alt-Del (QEMU reports RESET on the VM's admin QMP socket).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import fsp from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { WebSocket } from 'ws';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import {
  launchChromium,
  login,
  startConsole,
  stopAll,
  tid,
  watchCsp,
  type ConsoleUserSpec,
  type RunningConsole,
} from './harness.js';
import { ferryOk } from '../e2e/cli.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import type { AuditEntry, VmView } from '../../src/api/schemas.js';
import type { LabStatus } from '../../src/lab/lab.js';
import { labTempDir } from '../helpers.js';

const pw = (): string => 'pw-' + Math.random().toString(36).slice(2);
const OPERATOR: ConsoleUserSpec = { name: 'otto', role: 'operator', password: pw() };
const VIEWER: ConsoleUserSpec = { name: 'vee', role: 'viewer', password: pw() };
const VM = 'scr';
let dir = '';
let lab = '';
let consoleProc: ChildProcess | null = null;
let browser: Browser | null = null;
let ctx: BrowserContext;
let page: Page;
let con: RunningConsole;
let csp: string[] = [];

before(async () => {
  dir = await labTempDir('fscr-');
  lab = path.join(dir, 'lab');
  await ferryOk<LabStatus>(['lab', 'up', '--dir', lab, '--hosts', '2', '--json']);
  // An empty disk in the shared pool: SeaBIOS finds nothing to boot and waits on its screen.
  const blank = path.join(lab, 'shared', 'blank.raw');
  await fsp.writeFile(blank, Buffer.alloc(1 << 20));
  await ferryOk(
    [
      ...['vm', 'new', VM, '--host', 'host-a', '--image', blank, '--memory', '128M'],
      ...['--path', path.join(lab, 'shared', VM), '--start'],
    ],
    { lab },
  );
  con = await startConsole(lab, [OPERATOR, VIEWER]);
  consoleProc = con.proc;
  browser = await launchChromium(con.ca);
  ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  page = await ctx.newPage();
  csp = watchCsp(page);
});

after(() => stopAll({ browser, consoles: [consoleProc], lab, dir }));

/** Waits until noVNC's canvas shows text: enough bright pixels on the dark screen. */
async function waitScreenText(p: Page): Promise<number> {
  const handle = await p.waitForFunction(
    (sel) => {
      const c = document.querySelector<HTMLCanvasElement>(`${sel} canvas`);
      const g = c && c.width > 0 && c.height > 0 ? c.getContext('2d') : null;
      if (!c || !g) return 0;
      const d = g.getImageData(0, 0, c.width, c.height).data;
      let lit = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i]! + d[i + 1]! + d[i + 2]! > 300) lit++;
      return lit > 500 ? lit : 0;
    },
    tid('screen-canvas'),
    { timeout: 60_000, polling: 500 },
  );
  return await handle.jsonValue();
}

/** The PNG's size, after checking its pixels are not all one value. */
function pngNotBlank(buf: Buffer): { width: number; height: number } {
  assert.equal(buf.subarray(0, 8).toString('hex'), '89504e470d0a1a0a', 'a PNG');
  const idat: Buffer[] = [];
  for (let o = 8; o < buf.length;) {
    const len = buf.readUInt32BE(o);
    if (buf.toString('latin1', o + 4, o + 8) === 'IDAT') idat.push(buf.subarray(o + 8, o + 8 + len));
    o += 12 + len;
  }
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const values = new Set(raw.subarray(0, 200_000));
  assert.ok(values.size > 2, `the PNG is not blank (${values.size} byte values)`);
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

async function vncAudit(host: string): Promise<AuditEntry[]> {
  const all = await ferryOk<AuditEntry[]>(['audit', '--host', host, '--json'], { lab });
  return all.filter((e) => e.action === 'vm.vnc');
}

test('an operator sees the screen, Ctrl-Alt-Del resets the guest, a screenshot downloads a PNG', async () => {
  await login(page, con.url, OPERATOR);
  await page.click(tid(`screen-${VM}`));
  await page.waitForSelector(`${tid('screen-state')}[data-state="connected"]`, { timeout: 60_000 });
  const lit = await waitScreenText(page);
  console.log(`screen: ${lit} bright pixels on the canvas`);

  const vm = await ferryOk<VmView>(['vm', 'show', VM, '--json'], { lab });
  const qmp = await QmpClient.connect(path.join(lab, 'hosts', 'host-a', 'data', 'run', vm.id, 'qmp-admin.sock'), {
    vm: VM,
  });
  try {
    const mark = qmp.eventMark;
    const t0 = Date.now();
    await page.click(tid('screen-cad'));
    await qmp.waitEvent((e) => e.event === 'RESET', { since: mark, timeoutMs: 15_000, what: 'wait for RESET' });
    console.log(`Ctrl-Alt-Del to RESET: ${Date.now() - t0} ms`);
  } finally {
    qmp.close();
  }

  const [download] = await Promise.all([page.waitForEvent('download'), page.click(tid('screen-shot'))]);
  assert.match(download.suggestedFilename(), new RegExp(`^${VM}-.*\\.png$`));
  const png = await fsp.readFile(await download.path());
  const size = pngNotBlank(png);
  console.log(`screenshot: ${png.length} bytes, ${size.width}x${size.height}`);
  assert.ok(size.width >= 640 && size.height >= 200, `${size.width}x${size.height}`);

  const opened = await vncAudit('host-a');
  assert.ok(
    opened.some(
      (e) => e.who === OPERATOR.name && e.via === 'console' && e.role === 'operator' && e.target === `vm:${VM}`,
    ),
    JSON.stringify(opened),
  );
  assert.deepEqual(csp, [], 'no Content-Security-Policy violations');
});

test('the screen reconnects to the new host after the VM moves', async () => {
  const t0 = Date.now();
  await ferryOk(['move-vm', VM, '--to', 'host-b'], { lab });
  await page.waitForSelector(`${tid('screen-host')}:has-text("host-b")`, { timeout: 120_000 });
  await page.waitForSelector(`${tid('screen-state')}[data-state="connected"]`, { timeout: 60_000 });
  await waitScreenText(page);
  console.log(`move and reconnect: ${Date.now() - t0} ms`);
  assert.ok((await vncAudit('host-b')).some((e) => e.who === OPERATOR.name && e.target === `vm:${VM}`));
  await page.click(tid('screen-close'));
  assert.equal(await page.$(tid('screen')), null);
});

/** Opens the console's screen websocket from Node as a script would; resolves with the HTTP status (101 on open). */
function tryScreen(headers: Record<string, string>, protocols: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${con.origin.replace('https', 'wss')}/api/hosts/host-b/v1/vms/${VM}/vnc`, protocols, {
      ca: con.ca,
      headers,
    });
    ws.on('open', () => {
      ws.close();
      resolve(101);
    });
    ws.on('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
      ws.terminate();
    });
    ws.on('error', reject);
  });
}

test('the screen websocket needs an operator, the console origin and the CSRF token', async () => {
  const cookies = await ctx.cookies();
  const cookie = cookies.map((c) => `${c.name}=${c.value}`).join('; ');
  const csrf = await page.evaluate(async () => ((await (await fetch('/api/session')).json()) as { csrf: string }).csrf);
  const ok = { cookie, origin: con.origin };
  assert.equal(await tryScreen(ok, ['binary', `ferry-csrf.${csrf}`]), 101, 'the page itself');
  assert.equal(await tryScreen(ok, ['binary']), 403, 'no CSRF token');
  assert.equal(await tryScreen(ok, ['binary', 'ferry-csrf.forged']), 403, 'a wrong CSRF token');
  assert.equal(
    await tryScreen({ cookie, origin: 'https://evil.example' }, ['binary', `ferry-csrf.${csrf}`]),
    403,
    'another origin',
  );
  assert.equal(await tryScreen({ origin: con.origin }, ['binary', `ferry-csrf.${csrf}`]), 401, 'no session');

  const vctx = await browser!.newContext({ viewport: { width: 1280, height: 900 } });
  try {
    const v = await vctx.newPage();
    await login(v, con.url, VIEWER);
    await v.waitForSelector(tid(`vm-row-${VM}`), { timeout: 30_000 });
    assert.equal(await v.$(tid(`screen-${VM}`)), null, 'no Screen button for a viewer');
    const vcookie = (await vctx.cookies()).map((c) => `${c.name}=${c.value}`).join('; ');
    const vcsrf = await v.evaluate(async () => ((await (await fetch('/api/session')).json()) as { csrf: string }).csrf);
    assert.equal(
      await tryScreen({ cookie: vcookie, origin: con.origin }, ['binary', `ferry-csrf.${vcsrf}`]),
      403,
      'a viewer gets no screen',
    );
  } finally {
    await vctx.close();
  }
});
