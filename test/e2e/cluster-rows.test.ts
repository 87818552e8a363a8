// Issue 16.5 in a 3-host cluster lab: `cluster pause` keeps VMs off a node without draining
// it (no explicit move, no HA restart lands there; its VMs keep running), `resume` undoes it;
// a clustered VM with a fail-back window open now goes back to its preferred owner by itself when
// that node returns; `vm set --cpu` changes a stopped VM's CPU model and refuses bad ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ferry, ferryOk } from './cli.js';
import { sleep } from '../../src/util/exec.js';
import type { BatchView, ClusterView, VmView } from '../../src/api/schemas.js';
import { labTempDir } from '../helpers.js';
import { Etcd3 } from 'etcd3';
import { labCredentials, type LabStatus } from '../../src/lab/lab.js';
import * as K from '../../src/cluster/keys.js';

async function until<T>(what: string, ms: number, fn: () => Promise<T | null | undefined>): Promise<T> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const last = await fn().catch(() => null);
    if (last) return last;
    await sleep(500);
  }
  throw new Error(`${what}: not within ${ms} ms`);
}

test(
  'cluster pause: no move or HA restart lands on a paused node, its VM keeps running; resume; ' +
    'fail-back in a window brings an HA VM home; vm set --cpu',
  { timeout: 900_000 },
  async (t) => {
    const dir = await labTempDir('frows-');
    const lab = path.join(dir, 'lab');
    t.after(async () => {
      await ferry(['lab', 'down', '--dir', lab]);
      await fsp.rm(dir, { recursive: true, force: true });
    });
    await ferryOk(['lab', 'up', '--dir', lab, '--hosts', '3', '--cluster'], { timeoutMs: 300_000 });
    const status = (): Promise<ClusterView> => ferryOk<ClusterView>(['cluster', 'status', '--json'], { lab });
    const owner = async (vm: string): Promise<string | undefined> =>
      (await status()).vms.find((v) => v.name === vm)?.owner;
    const bootblock = (name: string, host: string, extra: string[]): Promise<VmView> =>
      ferryOk<VmView>(
        // 32 MiB: none of these is moved live (ha1, which fails back, is a probe guest below).
        ['vm', 'new', name, '--host', host, '--guest', 'bootblock', '--memory', '32M', '--json', ...extra],
        { lab },
      );

    // ha1 prefers host-a, then host-b (so only the pause keeps an HA restart off host-b), and
    // fails back in a window open from a minute ago for an hour (local time: the agents' TZ is ours).
    // A probe guest without its writer: the fail-back is a live move at the cluster's fixed 300 ms
    // downtime, which the bootblock (all of its memory rewritten without pause) reached only by
    // auto-converge throttling on a loaded machine — 59 passes and 61 s in one run, past the
    // 240 s below in another.
    const hhmm = (d: Date): string =>
      `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
    const win = `${hhmm(new Date(Date.now() - 60_000))}-${hhmm(new Date(Date.now() + 3600_000))}`;
    await ferryOk<VmView>(
      ['vm', 'new', 'ha1', '--host', 'host-a', '--guest', 'probe', '--probe-no-writer', '--json'].concat([
        '--ha',
        '--preferred-owner',
        'host-a,host-b',
        '--path',
        `${lab}/shared/ha1`,
      ]),
      { lab },
    );
    await ferryOk(['vm', 'start', 'ha1'], { lab });
    await bootblock('b1', 'host-b', ['--start']);
    const set = await ferry(['vm', 'set', 'ha1', '--failback', win], { lab });
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stdout, new RegExp(`ha1: fail-back ${win}`));
    assert.equal((await status()).vms.find((v) => v.name === 'ha1')?.failback, win);
    const typo = await ferry(['vm', 'set', 'ha1', '--failback', '25:00-01:00'], { lab });
    assert.equal(typo.code, 2);
    assert.match(typo.stderr, /Cannot use --failback: '25:00-01:00' is not 'immediately', 'never' or a window/);

    const p = await ferryOk<{ changed: boolean; reason: string }>(['cluster', 'pause', 'host-b', '--json'], { lab });
    assert.deepEqual([p.changed, p.reason], [true, 'admin']);
    const again = await ferryOk<{ changed: boolean }>(['cluster', 'pause', 'host-b', '--json'], { lab });
    assert.equal(again.changed, false, 'pausing a paused node changes nothing');
    const sb = (await status()).nodes.find((n) => n.name === 'host-b');
    assert.ok(sb);
    assert.equal(sb.state, 'paused');
    assert.equal(sb.paused?.reason, 'admin');
    assert.match(await ferryOk<string>(['cluster', 'status'], { lab }), /host-b\s+paused\s+\S+\s+by admin at/);
    const b1 = await ferryOk<VmView>(['vm', 'show', 'b1', '--json'], { lab });
    assert.deepEqual([b1.host, b1.state], ['host-b', 'running'], 'a pause moves nothing: b1 keeps running');

    // An explicit move into the paused node is refused before anything happens.
    const move = await ferry(['move-vm', 'ha1', '--to', 'host-b'], { lab });
    assert.equal(move.code, 3, move.stderr);
    assert.match(move.stderr + move.stdout, /host-b.*paused.*ferry cluster resume host-b/s);
    assert.equal((await ferryOk<VmView>(['vm', 'show', 'ha1', '--json'], { lab })).host, 'host-a');

    // host-a dies: ha1 restarts on host-c, never on the paused host-b.
    await ferryOk(['lab', 'kill', 'host-a', '--dir', lab]);
    const t0 = Date.now();
    const to = await until('ha1 restarted elsewhere', 90_000, async () => {
      const o = await owner('ha1');
      return o && o !== 'host-a' ? o : null;
    }).catch(async (err: unknown) => {
      // Say why: the cluster's view, and what the living agents logged of leadership and HA.
      const st = await status().catch((e: unknown) => String(e));
      const logs = await Promise.all(
        ['host-b', 'host-c'].map(async (h) =>
          (await fsp.readFile(path.join(lab, 'hosts', h, 'agent.log'), 'utf8').catch(() => ''))
            .split('\n')
            .filter((l) => /cluster\.|"ha|leader|error/i.test(l))
            .slice(-12)
            .map((l) => `${h}: ${l.slice(0, 400)}`),
        ),
      );
      throw new Error(`${(err as Error).message}\n${JSON.stringify(st)}\n${logs.flat().join('\n')}`);
    });
    process.stderr.write(`pause: host-a killed → ha1 owned by ${to} after ${Date.now() - t0} ms\n`);
    assert.equal(to, 'host-c');
    await until('ha1 running on host-c', 60_000, async () => {
      const v = await ferryOk<VmView>(['vm', 'show', 'ha1', '--json'], { lab });
      return v.host === 'host-c' && v.state === 'running';
    });

    const r = await ferry(['cluster', 'resume', 'host-b'], { lab });
    assert.equal(r.code, 0, r.stderr);
    const nb = (await status()).nodes.find((n) => n.name === 'host-b');
    assert.deepEqual([nb?.state, nb?.paused], ['up', null]);

    // The HA restart marked ha1 away from host-a in its cluster record, so any leader fails it back.
    assert.equal((await status()).vms.find((v) => v.name === 'ha1')?.away, 'host-a');

    // host-a returns while ha1's window is closed: ha1 stays on host-c, still away.
    const shut = `${hhmm(new Date(Date.now() + 3 * 3600_000))}-${hhmm(new Date(Date.now() + 4 * 3600_000))}`;
    await ferryOk(['vm', 'set', 'ha1', '--failback', shut], { lab });
    await ferryOk(['lab', 'up', '--dir', lab], { timeoutMs: 300_000 });
    const stateOf = async (n: string): Promise<string | undefined> =>
      (await status()).nodes.find((x) => x.name === n)?.state;
    await until('host-a up', 60_000, async () => (await stateOf('host-a')) === 'up');
    // A new leadership, which never saw host-a down (the fail-back once lived in the leader's
    // memory and was lost with it): the administrator deletes the election keys.
    const creds = labCredentials(lab);
    const etcd = new Etcd3({
      hosts: (await ferryOk<LabStatus>(['lab', 'status', '--dir', lab, '--json'])).etcd.map((m) => m.endpoint),
      credentials: {
        rootCertificate: await fsp.readFile(creds.ca),
        certChain: await fsp.readFile(creds.cert),
        privateKey: await fsp.readFile(creds.key),
      },
    });
    try {
      await etcd.namespace('/ferry/clusters/lab/').delete().prefix(K.election.prefix);
    } finally {
      etcd.close();
    }
    await until('a new leader', 60_000, async () => (await status()).leader);
    await sleep(6000); // a few fail-back passes: the window is still shut
    const still = (await status()).vms.find((v) => v.name === 'ha1');
    assert.deepEqual([still?.owner, still?.away], ['host-c', 'host-a']);
    // The leader said why ha1 waits (an event, in its log).
    const said = await Promise.all(
      ['host-a', 'host-b', 'host-c'].map((h) =>
        fsp.readFile(path.join(lab, 'hosts', h, 'agent.log'), 'utf8').catch(() => ''),
      ),
    );
    assert.ok(
      said
        .join('\n')
        .split('\n')
        .some((l) => l.includes('cluster.failback-waiting') && l.includes(`outside the VM's fail-back window ${shut}`)),
      'the leader says ha1 waits for its window',
    );

    // The window opens: the new leader moves ha1 home by itself (a fail-back batch through the queue).
    await ferryOk(['vm', 'set', 'ha1', '--failback', win], { lab });
    const t1 = Date.now();
    await until('ha1 failed back to host-a', 240_000, async () => {
      const v = await ferryOk<VmView>(['vm', 'show', 'ha1', '--json'], { lab });
      return v.host === 'host-a' && v.state === 'running' && (await owner('ha1')) === 'host-a';
    }).catch(async (err: unknown) => {
      // Say why: the cluster's view (batches, queue, marks) and what the agents logged of it.
      const st = await status().catch((e: unknown) => String(e));
      const logs = await Promise.all(
        ['host-a', 'host-b', 'host-c'].map(async (h) =>
          (await fsp.readFile(path.join(lab, 'hosts', h, 'agent.log'), 'utf8').catch(() => ''))
            .split('\n')
            .filter((l) => /cluster\.|migration\.|leader|error/i.test(l))
            .slice(-15)
            .map((l) => `${h}: ${l.slice(0, 400)}`),
        ),
      );
      throw new Error(`${(err as Error).message}\n${JSON.stringify(st)}\n${logs.flat().join('\n')}`);
    });
    process.stderr.write(`fail-back: host-a up → ha1 back on host-a after ${Date.now() - t1} ms\n`);
    // The batch runner records the item's end after the move's: it may still say moving here.
    const items = (b?: BatchView): string[] =>
      (b?.items ?? []).map((i) => `${i.vm}:${i.from}→${i.to ?? ''}:${i.state}`);
    const batchOfA = async (): Promise<BatchView | undefined> =>
      (await status()).batches.find((b) => b.node === 'host-a');
    const fb = await until('the fail-back batch done with ha1', 30_000, async () => {
      const b = await batchOfA();
      return b && !items(b).some((i) => i.endsWith(':moving')) ? b : null;
    }).catch(batchOfA);
    assert.equal(fb?.kind, 'failback');
    assert.deepEqual(items(fb), ['ha1:host-c→host-a:moved']);

    // vm set --cpu: a stopped VM only, a model QEMU knows and can give here.
    await bootblock('c1', 'host-b', []);
    const nehalem = await ferryOk<VmView>(['vm', 'set', 'c1', '--cpu', 'Nehalem', '--json'], { lab });
    assert.equal(nehalem.cpuModel, 'Nehalem');
    const compat = await ferry(['vm', 'set', 'c1', '--cpu', 'compat'], { lab });
    assert.equal(compat.code, 0, compat.stderr);
    assert.match(compat.stderr, /--cpu compat: \S+ \(usable on host-a, host-b, host-c\)/);
    for (const [model, re] of [
      ['Pentium9000', /knows no such CPU model; usable here under tcg: /],
      ['host', /needs KVM/],
      ['Skylake-Server', /cannot give this model under tcg here \(it lacks /],
    ] as const) {
      const bad = await ferry(['vm', 'set', 'c1', '--cpu', model], { lab });
      assert.equal(bad.code, 2, `${model}: ${bad.stderr}`);
      assert.match(bad.stderr, re);
    }
    const running = await ferry(['vm', 'set', 'b1', '--cpu', 'qemu64'], { lab });
    assert.equal(running.code, 1);
    assert.match(running.stderr, /Cannot change the CPU model of VM 'b1': it is running.*ferry vm stop b1/);
    assert.equal((await ferryOk<VmView>(['vm', 'show', 'c1', '--json'], { lab })).state, 'stopped');
    await ferryOk(['vm', 'start', 'c1'], { lab });
    assert.equal((await ferryOk<VmView>(['vm', 'show', 'c1', '--json'], { lab })).state, 'running');
  },
);
