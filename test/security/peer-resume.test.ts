// Issue 14 against the resumable copy (issue 17 item 6): host-a's shared-nothing move of a probe
// VM to host-b is cut mid-copy, so host-b keeps the partial images with markers. A hostile host
// (host-c, with only its own host certificate, raw requests) then sends host-b the Prepares an
// attacker would: a resume offer copied from the markers claiming to be host-a; the same offers
// as itself, naming the kept images (with the kept copy's move key, another key, another VM id);
// a disk outside the pools; and a move of its own of the same VM and disk ids, aborted, so its
// undo would keep its images under the same markers. Every Prepare naming the kept images is
// refused with a clear message; after each attack the kept images and markers are unchanged
// (size, mtime, marker text), nothing is registered or runs on host-b and no file is left there.
// Then host-a's retry of the same move resumes (less than half re-sent) and every record the
// guest acknowledged is on the moved disk.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type https from 'node:https';
import { ferry, ferryOk } from '../e2e/cli.js';
import { useLab, hostData, waitProbe } from '../e2e/lab.js';
import { hostQemuPids } from '../../src/lab/lab.js';
import { configFile } from '../../src/vm/folder.js';
import { sleep } from '../../src/util/exec.js';
import { moveKeyOf, type ResumeMarker } from '../../src/migration/resume-marker.js';
import type { VmView } from '../../src/api/schemas.js';
import type { MigrationRecord } from '../../src/migration/schemas.js';
import { get, hostAgent, post } from './host-client.js';
import { assertMovedIntact, cutCopyAt, makeFillDisk } from '../e2e/resume-check.js';

const L = useLab(3);
const MiB = 1048576;
const CUT = 0.6;
const NAME = 'kept1';
const agents: https.Agent[] = [];
after(() => {
  for (const a of agents) a.destroy();
});
const endpoint = (h: string): string => L.status.hosts.find((x) => x.name === h)!.endpoint;
const show = (name: string): Promise<VmView> => ferryOk<VmView>(['vm', 'show', name, '--json'], { lab: L.lab });
const resumeDir = (): string => path.join(hostData(L, 'host-b'), 'resume');

/** Every file under `dir`, with its size and mtime (what an attack must leave as it was). */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true, recursive: true })) {
    const p = path.join(e.parentPath, e.name);
    const st = await fsp.lstat(p);
    out.push(`${p} ${st.isFile() ? `${st.size} ${st.mtimeMs}` : 'dir'}`);
  }
  return out.sort();
}

/** host-b's kept copies: each marker's text, its image's size and mtime, and every file in its pools. */
async function keptState(): Promise<{ markers: Record<string, string>; images: string[]; pools: string[] }> {
  const markers: Record<string, string> = {};
  const images: string[] = [];
  for (const f of (await fsp.readdir(resumeDir())).filter((x) => x.endsWith('.json')).sort()) {
    const text = await fsp.readFile(path.join(resumeDir(), f), 'utf8');
    markers[f] = text;
    const m = JSON.parse(text) as ResumeMarker;
    const st = await fsp.stat(m.path);
    images.push(`${m.path} ${st.size} ${st.mtimeMs}`);
  }
  return { markers, images, pools: await tree(path.join(hostData(L, 'host-b'), 'pools')) };
}

let vm: VmView;
let spec: Record<string, unknown>;
let moveCmd: string[];
let kept: ResumeMarker[];
let before: Awaited<ReturnType<typeof keptState>>;
let mallory: https.Agent;

test("setup: host-a's shared-nothing move to host-b is cut at ~60 %; host-b keeps both disks", async () => {
  const fill = path.join(hostData(L, 'host-a'), 'pools', 'local', `${NAME}-fill.qcow2`);
  makeFillDisk(fill);
  vm = await ferryOk<VmView>(
    ['vm', 'new', NAME, '--host', 'host-a', '--guest', 'probe', '--disk', '64M', '--attach', fill, '--start', '--json'],
    { lab: L.lab },
  );
  spec = JSON.parse(await fsp.readFile(configFile(vm.configPath), 'utf8')) as Record<string, unknown>;
  await waitProbe(L, vm, 10, 90_000);
  // The disks are under --resumable auto's 1 GiB (a short test): `always` asks for the resumable
  // copy. Only the cut move is slowed: the retry's memory copy runs at full speed (QEMU-NOTES §E,
  // as resume-move.test.ts).
  moveCmd = ['move-vm', NAME, '--to', 'host-b', '--include-storage', '--resumable', 'always'];
  const id = (await ferryOk<string>([...moveCmd, '--bandwidth', '8', '--no-wait'], { lab: L.lab })).trim();
  // As resume-move.test.ts: cut at the mark.
  await cutCopyAt(L, vm, id, CUT);
  assert.equal((await show(NAME)).host, 'host-a');
  const count = async (): Promise<number> =>
    (await fsp.readdir(resumeDir()).catch(() => [] as string[])).filter((f) => f.endsWith('.json')).length;
  for (let i = 0; (await count()) < 2 && i < 100; i++) await sleep(200);
  assert.equal(await count(), 2, 'host-b keeps both partial disks');
  before = await keptState();
  kept = Object.values(before.markers).map((t) => JSON.parse(t) as ResumeMarker);
  assert.deepEqual(
    kept.map((m) => [m.vmId, m.source]),
    [
      [vm.id, 'host-a'],
      [vm.id, 'host-a'],
    ],
  );
  mallory = hostAgent(hostData(L, 'host-c'));
  agents.push(mallory);
});

/** A Prepare of VM `vmId` whose disks are at `paths` (by disk id), in folder `folder` on host-b. */
function prepare(o: {
  source: string;
  vmId?: string;
  paths?: Record<string, string>;
  folder?: string;
  resumeKey?: string;
  resume?: unknown[];
  /** Every disk raw, of this many bytes (what the source says; the destination makes them so). */
  rawBytes?: number;
}): Promise<{ status: number; body: string }> {
  const folder = o.folder ?? path.join(hostData(L, 'host-b'), 'pools', 'local', `evil-${crypto.randomUUID()}`);
  const paths = o.paths ?? Object.fromEntries(kept.map((m) => [m.diskId, m.path]));
  const raw = o.rawBytes === undefined ? {} : { format: 'raw' };
  const disks = (spec.disks as Array<Record<string, unknown>>).map((d) => ({
    ...d,
    ...raw,
    path: paths[String(d.id)],
  }));
  return post(mallory, endpoint('host-b'), '/v1/peer/incoming', {
    jobId: crypto.randomUUID(),
    source: o.source,
    spec: {
      ...spec,
      id: o.vmId ?? vm.id,
      configPath: folder,
      checkpointPath: folder,
      pagingPath: folder,
      disks,
    },
    tls: true,
    postcopy: false,
    storage: {
      disks: kept.map((m) => ({
        id: m.diskId,
        path: paths[m.diskId],
        format: m.format,
        virtualSizeBytes: o.rawBytes ?? m.virtualSizeBytes,
        allocatedBytes: 0,
        ...raw,
      })),
      dirs: [folder],
      files: [],
      resumeKey: o.resumeKey ?? kept[0]!.moveKey,
      ...(o.resume ? { resume: o.resume } : {}),
    },
  });
}

/** The offers the markers stand for (what host-a's retry sends), with `extra` over each. */
const offers = (extra: Partial<ResumeMarker> = {}): unknown[] =>
  kept.map((m) => ({
    moveKey: m.moveKey,
    vmId: m.vmId,
    source: m.source,
    diskId: m.diskId,
    path: m.path,
    virtualSizeBytes: m.virtualSizeBytes,
    format: m.format,
    ...extra,
  }));

/** After an attack: the kept copies as they were, nothing registered or running on host-b. */
async function untouched(what: string): Promise<void> {
  assert.deepEqual(await keptState(), before, `${what}: the kept images, markers and pool files are unchanged`);
  assert.deepEqual(await hostQemuPids(hostData(L, 'host-b')), [], `${what}: no QEMU on host-b`);
  const vms = await get(mallory, endpoint('host-b'), '/v1/peer/vms');
  assert.equal(vms.status, 200, vms.body);
  assert.deepEqual(JSON.parse(vms.body), [], `${what}: no VM registered or arriving on host-b`);
}

test('host-c cannot offer to resume the kept copy as host-a: refused, a host acts only as itself', async () => {
  const r = await prepare({ source: 'host-a', resume: offers() });
  assert.equal(r.status, 403, r.body);
  assert.match(r.body, /E_FORBIDDEN/);
  assert.match(r.body, /host 'host-c' is not its source 'host-a'; a host may act only on the moves it sends/);
  await untouched('as host-a');
});

test('host-c naming the kept images as itself takes nothing over and deletes nothing', async () => {
  const taken = /E_DEST_PATH.*a file is already there; choose another path/;
  const attempts: Array<[string, Parameters<typeof prepare>[0]]> = [
    ['the offers as host-c', { source: 'host-c', resume: offers({ source: 'host-c' }) }],
    ["host-a's offers word for word", { source: 'host-c', resume: offers() }],
    ['no offer (a kept copy its source cannot resume is deleted)', { source: 'host-c' }],
    [
      "host-c's own move key",
      {
        source: 'host-c',
        resumeKey: moveKeyOf(vm.id, 'host-c', 'host-b'),
        resume: offers({ source: 'host-c', moveKey: moveKeyOf(vm.id, 'host-c', 'host-b') }),
      },
    ],
    [
      'another VM id at the kept paths',
      { source: 'host-c', vmId: crypto.randomUUID(), resume: offers({ source: 'host-c' }) },
    ],
  ];
  for (const [what, o] of attempts) {
    const r = await prepare(o);
    assert.equal(r.status, 409, `${what}: ${r.body}`);
    assert.match(r.body, taken, what);
    await untouched(what);
  }
});

test('host-c cannot point a disk or an offer outside the pools', async () => {
  const outside = path.join(L.dir, 'host-files');
  await fsp.mkdir(outside, { recursive: true });
  const paths = Object.fromEntries(kept.map((m) => [m.diskId, path.join(outside, `${m.diskId}.qcow2`)]));
  const r = await prepare({ source: 'host-c', paths, resume: offers({ source: 'host-c' }) });
  assert.equal(r.status, 400, r.body);
  assert.match(r.body, /outside every storage pool of host/);
  // The offers climb out with '..' to a kept image: not the disk the move creates.
  const climb = offers({ source: 'host-c' }).map((o) => {
    const p = (o as { path: string }).path;
    return { ...(o as object), path: `${path.dirname(p)}/../${path.basename(path.dirname(p))}/${path.basename(p)}` };
  });
  const c = await prepare({ source: 'host-c', resume: climb });
  assert.equal(c.status, 409, c.body);
  assert.match(c.body, /a file is already there/);
  assert.deepEqual(await fsp.readdir(outside), [], 'nothing made outside the pools');
  await untouched('outside the pools');
});

test('host-c asking for raw disks of a size past a byte count gets a refusal; nothing is made', async () => {
  const folder = path.join(hostData(L, 'host-b'), 'pools', 'local', 'evil-raw');
  const paths = Object.fromEntries(kept.map((m) => [m.diskId, path.join(folder, `${m.diskId}.raw`)]));
  const r = await prepare({
    source: 'host-c',
    folder,
    paths,
    resumeKey: moveKeyOf(vm.id, 'host-c', 'host-b'),
    rawBytes: Number.MAX_SAFE_INTEGER,
  });
  assert.notEqual(r.status, 200, r.body);
  assert.match(r.body, /Cannot size a raw image at 9007199254740991 bytes: not a byte count/);
  assert.equal(fs.existsSync(folder), false, 'its folder and disks are removed');
  await untouched('raw disks too large');
});

test("host-c's own move of the same VM and disk ids, cut, does not replace the kept copy's markers", async () => {
  // Its own folder and images, its own key: a move it may send. Cut (aborted, or its Prepare
  // fails: no kernel was sent), its undo keeps resumable images with markers keyed by VM and
  // disk id, the same as host-a's.
  const folder = path.join(hostData(L, 'host-b'), 'pools', 'local', 'evil-own');
  const paths = Object.fromEntries(kept.map((m) => [m.diskId, path.join(folder, `${m.diskId}.qcow2`)]));
  const jobOf = async (r: { status: number; body: string }): Promise<string> => {
    if (r.status !== 200) return '';
    const v = JSON.parse(r.body) as { jobId: string };
    const a = await post(mallory, endpoint('host-b'), `/v1/peer/incoming/${v.jobId}/abort`, {});
    assert.equal(a.status, 200, a.body);
    return v.jobId;
  };
  const r = await prepare({ source: 'host-c', folder, paths, resumeKey: moveKeyOf(vm.id, 'host-c', 'host-b') });
  // Refused or not, it got past its disks: it failed at QEMU's start (no kernel), or is aborted.
  if (r.status !== 200) assert.match(r.body, /boot\.kernel of VM .* does not exist/, r.body);
  const job = await jobOf(r);
  process.stderr.write(`host-c's own move: Prepare ${r.status}${job ? ', aborted' : ''}: ${r.body.slice(0, 300)}\n`);
  assert.equal(fs.existsSync(folder), false, "host-c's images are not kept");
  await untouched("host-c's own cut move");
});

test("host-a's retry of the same move resumes the kept copy; every acknowledged record is there", async () => {
  const t0 = Date.now();
  const retry = await ferry([...moveCmd, '--json'], { lab: L.lab, timeoutMs: 180_000 });
  assert.equal(retry.code, 0, `retry: ${retry.stderr}`);
  const rr = JSON.parse(retry.stdout) as MigrationRecord;
  assert.equal(rr.state, 'completed', `retry: ${JSON.stringify(rr.error)}`);
  const resumed = rr.disks.filter((d) => d.resumed);
  assert.equal(resumed.length, 2, `both disks resumed: ${JSON.stringify(rr.events.map((e) => e.message))}`);
  const resent = resumed.reduce((a, d) => a + (d.resumed?.resentBytes ?? 0), 0);
  const size = resumed.reduce((a, d) => a + (d.resumed?.diskBytes ?? 0), 0);
  assert.ok(resent < size / 2, `re-sent ${resent} of ${size} bytes`);
  assert.ok(
    rr.events.some((e) => /copy resumed, [\d.]+ MiB re-sent of [\d.]+ MiB/.test(e.message)),
    'the record says the copy resumed',
  );
  process.stderr.write(
    `retry after the attacks: re-sent ${(resent / MiB).toFixed(1)} of ${(size / MiB).toFixed(1)} MiB ` +
      `in ${Date.now() - t0} ms\n`,
  );
  assert.deepEqual(
    (await fsp.readdir(resumeDir())).filter((f) => f.endsWith('.json')),
    [],
    'the kept copies were taken over',
  );
  assert.deepEqual(await hostQemuPids(hostData(L, 'host-c')), [], 'none on host-c');
  await assertMovedIntact(L, NAME, vm.id);
  await ferryOk(['vm', 'rm', NAME], { lab: L.lab });
});
