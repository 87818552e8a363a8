// The web console in Debian's Chromium (playwright-core), against a real 2-host lab.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import {
  launchChromium,
  login,
  request,
  startConsole,
  stopAll,
  tid,
  watchCsp,
  type ConsoleUserSpec,
  type RunningConsole,
} from './harness.js';
import { ferryOk } from '../e2e/cli.js';
import { REPO_ROOT } from '../../guest/paths.js';
import { sleep } from '../../src/util/exec.js';
import type { CheckpointList, VmView } from '../../src/api/schemas.js';
import type { LabStatus } from '../../src/lab/lab.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { labTempDir } from '../helpers.js';

const ADMIN: ConsoleUserSpec = { name: 'ada', role: 'admin', password: 'pw-' + Math.random().toString(36).slice(2) };
const VIEWER: ConsoleUserSpec = { name: 'vee', role: 'viewer', password: 'pw-' + Math.random().toString(36).slice(2) };
// FERRY_SCREENSHOTS=docs/screenshots refreshes the committed ones; otherwise they go to a temp folder.
let shots = process.env.FERRY_SCREENSHOTS ? path.resolve(REPO_ROOT, process.env.FERRY_SCREENSHOTS) : '';
let dir = '';
let lab = '';
let consoleProc: ChildProcess | null = null;
let url = '';
let browser: Browser | null = null;
let page: Page;
let con: RunningConsole;
let csp: string[] = [];

before(async () => {
  dir = await labTempDir('fui-');
  lab = path.join(dir, 'lab');
  shots ||= path.join(dir, 'screenshots');
  await ferryOk<LabStatus>(['lab', 'up', '--dir', lab, '--hosts', '2', '--json']);
  await ferryOk(
    [
      'vm',
      'new',
      'web1',
      '--host',
      'host-a',
      '--guest',
      'probe',
      '--path',
      path.join(lab, 'shared', 'web1'),
      '--start',
    ],
    { lab },
  );
  await ferryOk(['vm', 'new', 'local1', '--host', 'host-a', '--guest', 'probe', '--start'], { lab });
  con = await startConsole(lab, [ADMIN, VIEWER]);
  ({ proc: consoleProc, url } = con);
  browser = await launchChromium(con.ca);
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  csp = watchCsp(page);
  await fsp.mkdir(shots, { recursive: true });
});

after(() => stopAll({ browser, consoles: [consoleProc], lab, dir }));

test('nothing without logging in; a wrong password is refused; the right one opens the console', async () => {
  const res = await request(con, 'GET', '/api/hosts/host-a/v1/vms');
  assert.equal(res.status, 401, 'the API needs a session');
  await page.goto(url);
  await page.fill(tid('login-name'), ADMIN.name);
  await page.fill(tid('login-password'), 'wrong-password');
  await page.click(tid('login-submit'));
  await page.waitForSelector(tid('login-error'));
  await page.fill(tid('login-password'), ADMIN.password);
  await page.click(tid('login-submit'));
  await page.waitForSelector(tid('vm-row-web1'), { timeout: 30_000 });
  assert.equal(await page.textContent(tid('whoami')), 'ada (admin)');
  await page.click(tid('nav-hosts'));
  await page.waitForSelector(tid('host-card-host-b'));
  assert.equal(await page.textContent(tid('host-state-host-b')), 'up');
  await page.screenshot({ path: path.join(shots, 'hosts.png') });
  await page.click(tid('nav-vms'));
});

async function openWizard(vm: string): Promise<void> {
  await page.click(tid('nav-vms'));
  await page.waitForSelector(tid(`move-${vm}`));
  await page.click(tid(`move-${vm}`));
  await page.waitForSelector(tid('move-wizard'));
}

/** Wizard pages 1–3 for "move only the virtual machine" to `dest`; ends on the compatibility page. */
async function wizardToCompatibility(vm: string, dest: string): Promise<void> {
  await openWizard(vm);
  await page.click(tid('move-type-vm'));
  await page.click(tid('wizard-next'));
  await page.selectOption(tid('wizard-destination'), dest);
  await page.click(tid('wizard-next'));
  await page.click(tid('move-option-vmonly'));
  await page.click(tid('wizard-next'));
}

test('the Move wizard live-migrates a VM (move only the VM) and shows it complete', async () => {
  await wizardToCompatibility('web1', 'host-b');
  const report = await page.waitForSelector(`${tid('compat-report')}[data-compatible="true"]`, { timeout: 60_000 });
  assert.ok(report);
  // A running VM moved live is predicted on the compatibility page (QEMU samples its dirty rate).
  assert.match((await page.textContent(tid('compat-prediction'))) ?? '', /^Prediction: (converges|does not)/);
  await page.click(tid('wizard-next'));
  await page.waitForSelector(tid('wizard-summary'));
  await page.screenshot({ path: path.join(shots, 'wizard-summary.png') });
  await page.click(tid('wizard-finish'));
  await page.waitForSelector(`${tid('migration-state')}:has-text("completed")`, { timeout: 90_000 });
  await page.screenshot({ path: path.join(shots, 'wizard-progress.png') });
  // The move carried the wizard's prediction, and sets it against what it did.
  assert.match((await page.textContent(tid('migration-prediction-outcome'))) ?? '', /took \d+\.\d s, predicted ~/);
  // Where its time went: each step, on the host that ran it.
  await page.click(`${tid('migration-steps')} summary`);
  const qemu = await page.textContent(tid('migration-step-destination-qemu'));
  assert.match(qemu ?? '', /^\+[\d.]+ m?shost-bqemu[\d.]+ m?s$/);
  assert.match((await page.textContent(tid('migration-step-source-migrate'))) ?? '', /host-amigrate/);
  await page.click(tid('wizard-close'));
  const v = await ferryOk<VmView>(['vm', 'show', 'web1', '--json'], { lab });
  assert.equal(v.host, 'host-b');
  assert.equal(v.state, 'running');
});

test('a compare failure is shown in the wizard (VM on local storage, move only the VM)', async () => {
  await wizardToCompatibility('local1', 'host-b');
  await page.waitForSelector(`${tid('compat-report')}[data-compatible="false"]`, { timeout: 60_000 });
  const codes = await page.$$eval(tid('compat-item'), (els) => els.map((e) => e.getAttribute('data-code')));
  assert.ok(codes.includes('E_STORAGE_NOT_SHARED'), codes.join(','));
  assert.equal(await page.isDisabled(tid('wizard-next')), true, 'cannot go on while incompatible');
  await page.screenshot({ path: path.join(shots, 'wizard-compatibility.png') });
  await page.click(tid('wizard-close'));
});

test('the wizard warns of a live move under TCG of a guest booting from its disk (Linux without pti=on?)', async () => {
  // A blank disk: SeaBIOS finds nothing to boot and waits; QEMU runs it all the same.
  const img = path.join(lab, 'shared', 'blank.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '64M']);
  const folder = path.join(lab, 'shared', 'disk1');
  await ferryOk(['vm', 'new', 'disk1', '--host', 'host-a', '--image', img, '--path', folder, '--start', '--json'], {
    lab,
  });
  try {
    await wizardToCompatibility('disk1', 'host-b');
    await page.waitForSelector(`${tid('compat-report')}[data-compatible="true"]`, { timeout: 60_000 });
    const warnings = await page.$$eval(tid('compat-warning'), (els) =>
      els.map((e) => ({ code: e.getAttribute('data-code'), text: e.textContent })),
    );
    assert.deepEqual(
      warnings.map((w) => w.code),
      ['W_TCG_GUEST_WRITES'],
    );
    assert.match(warnings[0]?.text ?? '', /without KVM \(TCG\).*if it is Linux, boot it with pti=on/);
    // A warning does not stop the move.
    assert.equal(await page.isDisabled(tid('wizard-next')), false);
    await page.click(tid('wizard-close'));
  } finally {
    await ferryOk(['vm', 'stop', 'disk1', '--force'], { lab });
    await ferryOk(['vm', 'rm', 'disk1'], { lab });
    await fsp.rm(img, { force: true });
  }
});

test('the wizard moves storage (all to one folder, a resumable copy) while the VM runs', async () => {
  await openWizard('local1');
  await page.click(tid('move-type-storage'));
  await page.click(tid('wizard-next'));
  await page.click(tid('move-option-single'));
  // A running VM's disks are copied: the page asks how (`--resumable`).
  assert.equal(await page.inputValue(tid('wizard-resumable')), 'auto');
  await page.selectOption(tid('wizard-resumable'), 'always');
  await page.click(tid('wizard-next'));
  // The folder picker opens at a pool's root on the VM's host; "Use this folder" fills the path in.
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.startsWith('/'), tid('picker-current'), {
    timeout: 30_000,
  });
  const root = (await page.textContent(tid('picker-current'))) ?? '';
  await page.click(tid('picker-use'));
  assert.equal(await page.inputValue(tid('wizard-path-storage')), root);
  const to = path.join(lab, 'shared', 'local1-moved');
  await page.fill(tid('wizard-path-storage'), to);
  await page.click(tid('wizard-next'));
  await page.waitForSelector(tid('wizard-summary'));
  assert.match((await page.textContent(tid('summary-copy'))) ?? '', /Resumable/);
  await page.click(tid('wizard-finish'));
  await page.waitForSelector(`${tid('migration-state')}:has-text("completed")`, { timeout: 90_000 });
  await page.click(tid('wizard-close'));
  const moves = await ferryOk<MigrationRecord[]>(['migration', 'list', '--all', '--json'], { lab });
  const last = moves.filter((m) => m.vm === 'local1' && m.kind === 'storage').at(-1);
  assert.equal(last?.diskCopy, 'resumable', 'the move copied by resumable backup passes, as chosen');
  const v = await ferryOk<VmView>(['vm', 'show', 'local1', '--json'], { lab });
  assert.equal(v.configPath, to);
  assert.equal(v.disks[0]!.path, path.join(to, 'data.qcow2'));
  assert.equal(v.state, 'running');
});

test('the migration view shows a live move with its chart, and Cancel cancels it', async () => {
  const id = (
    await ferryOk<string>(['move-vm', 'web1', '--to', 'host-a', '--bandwidth', '2', '--no-wait'], { lab })
  ).trim();
  await page.click(tid('nav-migrations'));
  const card = tid(`migration-${id}`);
  await page.waitForSelector(`${card}[data-state="copying-memory"]`, { timeout: 60_000 });
  await sleep(2500); // a few samples for the chart
  await page.waitForSelector(`${card} ${tid('migration-chart')}`);
  await page.screenshot({ path: path.join(shots, 'migration-view.png') });
  await page.click(`${card} ${tid('migration-cancel')}`);
  await page.waitForSelector(`${tid(`history-row-${id}`)}[data-state="cancelled"]`, { timeout: 60_000 });
  const v = await ferryOk<VmView>(['vm', 'show', 'web1', '--json'], { lab });
  assert.equal(v.host, 'host-b', 'the VM stays where it was');
  assert.equal(v.state, 'running');
  await page.click(tid('nav-cluster'));
  await page.waitForSelector(tid('cluster-node-host-a'));
  await page.screenshot({ path: path.join(shots, 'cluster.png') });
  assert.ok(fs.existsSync(path.join(shots, 'migration-view.png')));
  assert.deepEqual(csp, [], 'the pages break no Content-Security-Policy rule');
});

test('pages follow the event streams: an idle page sends no request for 10 s; a change shows without one', async () => {
  const sent: string[] = [];
  const onRequest = (r: { url: () => string; method: () => string }): void => {
    sent.push(`${r.method()} ${r.url().replace(con.origin, '')}`);
  };
  page.on('request', onRequest);
  try {
    for (const [nav, ready] of [
      ['nav-vms', 'vm-row-web1'],
      ['nav-hosts', 'host-card-host-b'],
      ['nav-migrations', 'migrations-empty'],
      ['nav-cluster', 'cluster-node-host-a'],
    ] as const) {
      await page.click(tid(nav));
      await page.waitForSelector(tid(ready), { timeout: 30_000 });
      await sleep(1500); // the page's first loads and its event streams
      sent.length = 0;
      await sleep(10_000);
      console.log(`${nav}: ${sent.length} requests in 10 s idle`);
      assert.deepEqual(sent, [], `${nav} idle`);
    }
    // A change made elsewhere (the CLI) reaches the VMs page through host-a's event stream.
    await page.click(tid('nav-vms'));
    await page.waitForSelector(`${tid('vm-state-local1')}:has-text("running")`);
    await sleep(1500);
    sent.length = 0;
    await ferryOk(['vm', 'pause', 'local1'], { lab });
    await page.waitForSelector(`${tid('vm-state-local1')}:has-text("paused")`, { timeout: 15_000 });
    await ferryOk(['vm', 'resume', 'local1'], { lab });
    await page.waitForSelector(`${tid('vm-state-local1')}:has-text("running")`, { timeout: 15_000 });
    console.log(`vms page, pause and resume elsewhere: ${sent.length} requests: ${sent.join(', ')}`);
    assert.ok(
      sent.every((r) => r === 'GET /api/hosts/host-a/v1/vms' || r === 'GET /api/hosts/host-b/v1/vms'),
      sent.join(', '),
    );
    assert.ok(sent.length <= 8, `one load per change and host: ${sent.join(', ')}`);
  } finally {
    page.off('request', onRequest);
  }
});

test('a viewer sees the inventory but no Move, Drain or Cancel', async () => {
  const ctx = await browser!.newContext({ viewport: { width: 1280, height: 900 } });
  try {
    const p = await ctx.newPage();
    await login(p, url, VIEWER);
    await p.waitForSelector(tid('vm-row-web1'), { timeout: 30_000 });
    assert.equal(await p.$(tid('move-web1')), null, 'no Move button for a viewer');
    await p.click(tid('nav-cluster'));
    await p.waitForSelector(tid('cluster-node-host-a'));
    assert.equal(await p.$(tid('cluster-drain-host-a')), null, 'no Drain button for a viewer');
    await p.click(tid('logout'));
    await p.waitForSelector(tid('login-form'));
  } finally {
    await ctx.close();
  }
});

/** The backing files of IMAGE's chain (qemu-img, shared lock: the image may be in use), absolute. */
function backingChain(image: string): string[] {
  const out = execFileSync('qemu-img', ['info', '-U', '--backing-chain', '--output=json', image], { encoding: 'utf8' });
  const chain = JSON.parse(out) as Array<{ filename: string; 'full-backing-filename'?: string }>;
  return chain.flatMap((i) =>
    i['full-backing-filename'] ? [path.resolve(path.dirname(i.filename), i['full-backing-filename'])] : [],
  );
}

test('the wizard places each item of a VM with checkpoints; a folder outside the pools is refused', async () => {
  const shared = path.join(lab, 'shared');
  const list = (): Promise<CheckpointList> => ferryOk<CheckpointList>(['checkpoint', 'list', 'ck1', '--json'], { lab });
  await ferryOk(
    ['vm', 'new', 'ck1', '--host', 'host-a', '--guest', 'probe', '--smart-paging'].concat([
      '--path',
      path.join(shared, 'ck1'),
    ]),
    {
      lab,
    },
  );
  await ferryOk(['checkpoint', 'new', 'ck1', 'c1'], { lab });
  await ferryOk(['checkpoint', 'new', 'ck1', 'c2'], { lab });
  const before = await list();
  const vm = await ferryOk<VmView>(['vm', 'show', 'ck1', '--json'], { lab });
  await page.click(tid('nav-vms'));
  await page.waitForSelector(`${tid('vm-checkpoints-ck1')}:has-text("2 checkpoints")`, { timeout: 30_000 });
  await openWizard('ck1');
  await page.click(tid('move-type-storage'));
  await page.click(tid('wizard-next'));
  await page.click(tid('move-option-items'));
  await page.click(tid('wizard-next'));
  const nFiles = before.checkpoints.reduce((a, c) => a + c.files.length, 0);
  assert.match(
    (await page.textContent(tid('wizard-checkpoint-info'))) ?? '',
    new RegExp(`^2 checkpoints, ${nFiles} files?, `),
  );
  assert.match((await page.textContent(tid('wizard-paging-info'))) ?? '', /Smart Paging allowed; it is not running/);

  // A checkpoint folder outside every pool: the agent's refusal is shown, and nothing moves.
  await page.fill(tid('wizard-path-checkpoint'), '/tmp/ferry-outside-pools');
  await page.click(tid('wizard-next'));
  await page.click(tid('wizard-finish'));
  await page.waitForSelector(tid('wizard-error'), { timeout: 30_000 });
  assert.match((await page.textContent(tid('wizard-error'))) ?? '', /outside every storage pool of host 'host-a'/);
  assert.deepEqual(await list(), before, 'nothing moved');
  await page.click(tid('wizard-back'));

  // Configuration and paging typed in; the checkpoint folder picked with Browse… (a new folder in the shared pool).
  const cfg = path.join(shared, 'ck1-cfg');
  const ck = path.join(shared, 'ck1-ck');
  const pg = path.join(shared, 'ck1-paging');
  await page.fill(tid('wizard-path-config'), cfg);
  await page.fill(tid('wizard-path-paging'), pg);
  await page.fill(tid('wizard-path-checkpoint'), shared);
  await page.click(tid('wizard-browse-checkpoint'));
  await page.waitForSelector(`${tid('picker-current')}:text-is("${shared}")`, { timeout: 30_000 });
  await page.fill(tid('picker-new-folder'), 'ck1-ck');
  await page.click(tid('picker-use'));
  assert.equal(await page.inputValue(tid('wizard-path-checkpoint')), ck);
  // Its disk is a layer of the chain: it follows the checkpoint folder.
  const active = vm.disks[0]!.path;
  const activeTo = path.join(ck, path.relative(vm.checkpointPath, active));
  assert.equal(await page.inputValue(tid('wizard-path-disk-0')), activeTo);
  assert.equal(await page.getAttribute(tid('wizard-path-disk-0'), 'readonly'), '');
  await page.click(tid('wizard-next'));
  await page.waitForSelector(tid('wizard-summary'));
  const said = async (id: string): Promise<string> => (await page.textContent(tid(id))) ?? '';
  assert.ok((await said('summary-checkpoint')).endsWith(`→ ${ck} (2 checkpoints)`), await said('summary-checkpoint'));
  assert.ok((await said('summary-paging')).endsWith(`→ ${pg}`), await said('summary-paging'));
  assert.ok((await said('summary-config')).endsWith(`→ ${cfg}`), await said('summary-config'));
  assert.ok((await said('summary-disk')).includes(`→ ${activeTo} `), await said('summary-disk'));
  await page.screenshot({ path: path.join(shots, 'wizard-items-summary.png') });
  await page.click(tid('wizard-finish'));
  await page.waitForSelector(`${tid('migration-state')}:has-text("completed")`, { timeout: 90_000 });
  await page.click(tid('wizard-close'));

  const v = await ferryOk<VmView>(['vm', 'show', 'ck1', '--json'], { lab });
  assert.deepEqual([v.configPath, v.checkpointPath, v.pagingPath], [cfg, ck, pg]);
  assert.equal(v.disks[0]!.path, activeTo);
  const moved = await list();
  const folder = path.join(ck, 'checkpoints');
  assert.equal(moved.folder, folder);
  assert.deepEqual(
    moved.checkpoints.map((c) => [c.id, c.name, c.parent, c.files]),
    before.checkpoints.map((c) => [c.id, c.name, c.parent, c.files]),
  );
  for (const c of moved.checkpoints) for (const f of c.files) await fsp.access(path.join(folder, f));
  assert.equal(fs.existsSync(before.folder), false, `${before.folder} removed`);
  // Backing references rewritten: the active layer's chain runs through the new folders only.
  const chain = backingChain(v.disks[0]!.path);
  assert.ok(chain[0]!.startsWith(folder + '/'), `the active layer's backing ${chain[0]} is in ${folder}`);
  assert.equal(chain.at(-1), path.join(cfg, path.basename(before.checkpoints[0]!.baseDisks[0]!)));
  assert.ok(
    chain.every((b) => b.startsWith(folder + '/') || b.startsWith(cfg + '/')),
    chain.join(', '),
  );
  const applied = await ferryOk<{ checkpoint: string; vm: VmView }>(['checkpoint', 'apply', 'ck1', 'c1', '--json'], {
    lab,
  });
  assert.equal(applied.checkpoint, 'c1');
  assert.equal((await list()).current, 'c1', 'the VM is at c1 again');

  // On a host without room for its RAM it starts from a file in the new paging folder, and the list says so.
  await ferryOk(['host', 'set', 'host-a', '--max-vm-memory', '64'], { lab });
  try {
    await ferryOk(['vm', 'start', 'ck1'], { lab });
    const r = await ferryOk<VmView>(['vm', 'show', 'ck1', '--json'], { lab });
    assert.equal(r.memoryBacking, 'paging-file');
    assert.equal(path.dirname(r.pagingFile ?? ''), pg);
    await page.waitForSelector(tid('vm-paging-ck1'), { timeout: 15_000 });
    await ferryOk(['vm', 'stop', 'ck1', '--force'], { lab });
    await page.waitForSelector(tid('vm-paging-ck1'), { state: 'detached', timeout: 15_000 });
  } finally {
    // Room for every VM again: no limit.
    const h = await ferryOk<{ memory: { maxVmBytes?: number | null } }>(
      ['host', 'set', 'host-a', '--max-vm-memory', 'none', '--json'],
      { lab },
    );
    assert.equal(h.memory.maxVmBytes ?? null, null);
  }
});
