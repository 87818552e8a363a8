// The console's cluster page in Debian's Chromium against a real 2-node cluster lab (etcd):
// drain a node from its plan, watch it paused and emptied, then resume with fail-back.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { launchChromium, login, startConsole, stopAll, tid, watchCsp, type ConsoleUserSpec } from './harness.js';
import { ferryOk } from '../e2e/cli.js';
import { REPO_ROOT } from '../../guest/paths.js';
import type { VmView } from '../../src/api/schemas.js';
import { labTempDir } from '../helpers.js';

const ADMIN: ConsoleUserSpec = { name: 'ada', role: 'admin', password: 'pw-' + Math.random().toString(36).slice(2) };
let shots = process.env.FERRY_SCREENSHOTS ? path.resolve(REPO_ROOT, process.env.FERRY_SCREENSHOTS) : '';
let dir = '';
let lab = '';
let consoleProc: ChildProcess | null = null;
let browser: Browser | null = null;
let page: Page;
let csp: string[] = [];
let url = '';

before(async () => {
  dir = await labTempDir('fuc-');
  lab = path.join(dir, 'lab');
  shots ||= path.join(dir, 'screenshots');
  await ferryOk(['lab', 'up', '--dir', lab, '--hosts', '2', '--cluster']);
  await ferryOk(
    [
      'vm',
      'new',
      'c1',
      '--host',
      'host-b',
      '--guest',
      'probe',
      '--probe-no-writer',
      '--memory',
      '128',
      '--ha',
      '--priority',
      'high',
      '--path',
      path.join(lab, 'shared', 'c1'),
      '--start',
    ],
    { lab },
  );
  const con = await startConsole(lab, [ADMIN]);
  ({ proc: consoleProc, url } = con);
  browser = await launchChromium(con.ca);
  page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  csp = watchCsp(page);
  await fsp.mkdir(shots, { recursive: true });
});

after(() => stopAll({ browser, consoles: [consoleProc], lab, dir }));

const where = async (): Promise<string[]> =>
  (await ferryOk<VmView[]>(['vm', 'list', '--json'], { lab })).filter((v) => v.name === 'c1').map((v) => v.host);

test('cluster page: drain a node from its plan, see it paused and empty, resume with fail-back', async () => {
  await login(page, url, ADMIN);
  await page.click(tid('nav-cluster'));
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent === 'up',
    tid('cluster-node-state-host-b'),
    { timeout: 30_000 },
  );
  await page.click(tid('cluster-drain-host-b'));
  await page.waitForSelector(tid('drain-plan'), { timeout: 60_000 });
  assert.equal(await page.textContent(tid('drain-plan-to-c1')), 'host-a');
  await page.screenshot({ path: path.join(shots, 'cluster-drain-plan.png') });
  await page.click(tid('drain-confirm'));
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent === 'paused',
    tid('cluster-node-state-host-b'),
    { timeout: 30_000 },
  );
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent === 'completed',
    tid('cluster-batch-state-host-b'),
    { timeout: 180_000 },
  );
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent === '0',
    tid('cluster-node-vms-host-b'),
    { timeout: 30_000 },
  );
  await page.screenshot({ path: path.join(shots, 'cluster-drained.png') });
  assert.deepEqual(await where(), ['host-a']);
  await page.click(tid('cluster-failback-host-b'));
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent === 'up',
    tid('cluster-node-state-host-b'),
    { timeout: 30_000 },
  );
  await page.waitForFunction(() => /Fail-back of host-b/.test(document.body.textContent), undefined, {
    timeout: 30_000,
  });
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent === 'completed',
    tid('cluster-batch-state-host-b'),
    { timeout: 180_000 },
  );
  assert.deepEqual(await where(), ['host-b']);
  assert.deepEqual(csp, [], 'the page breaks no Content-Security-Policy rule');
});
