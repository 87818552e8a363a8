// `npm run demo`: the tour. A 2-host lab on this machine, a probe VM on host-a whose
// console shows its heartbeat and disk acknowledgements, live, shared-nothing and storage
// moves; then a 3-host cluster lab: drain, fail-back, and HA after `lab kill`, stopped at the end.
// The 2-host lab stays up in .cache/demo-lab for you to explore; `bin/ferry lab down` stops it.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { REPO_ROOT } from '../guest/paths.js';
import { parseSerial } from '../guest/records.js';
import { sleep } from '../src/util/exec.js';

const lab = process.env.FERRY_DEMO_LAB ?? path.join(REPO_ROOT, '.cache', 'demo-lab');
const bin = path.join(REPO_ROOT, 'bin', 'ferry');
const seconds = Number(process.env.FERRY_DEMO_SECONDS ?? 5);

function ferry(args: string[], show = true): Promise<{ code: number; out: string }> {
  if (show) process.stdout.write(`\n$ ferry ${args.join(' ')}\n`);
  return new Promise((resolve) => {
    const child = spawn(bin, args, {
      env: { ...process.env, FERRY_LAB: lab },
      stdio: ['ignore', 'pipe', show ? 'inherit' : 'ignore'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (show) process.stdout.write(d);
    });
    child.on('exit', (code) => resolve({ code: code ?? 1, out }));
  });
}

async function must(args: string[], show = true): Promise<string> {
  const r = await ferry(args, show);
  if (r.code !== 0) {
    process.stderr.write(`demo: 'ferry ${args.join(' ')}' failed (exit ${r.code})\n`);
    process.exit(1);
  }
  return r.out;
}

await must(['lab', 'up', '--dir', lab, '--hosts', '2']);
for (const vm of ['demo', 'demo-local']) {
  if ((await ferry(['vm', 'show', vm], false)).code === 0) {
    await ferry(['vm', 'stop', vm, '--force'], false);
    await must(['vm', 'rm', vm], false);
  }
}
const t0 = Date.now();
await must([
  'vm',
  'new',
  'demo',
  '--host',
  'host-a',
  '--guest',
  'probe',
  '--path',
  path.join(lab, 'shared', 'demo'),
  '--start',
]);
let firstHb = 0;
while (!firstHb && Date.now() - t0 < 60_000) {
  const text = (await ferry(['vm', 'console', 'demo'], false)).out;
  if (parseSerial(text).heartbeats.length) firstHb = Date.now() - t0;
  else await sleep(200);
}
process.stdout.write(
  `\nfirst heartbeat ${firstHb} ms after 'vm new --start'; the console for ${seconds} s (the last line each second):\n`,
);
for (let s = 0; s < seconds; s++) {
  await sleep(1000);
  const r = parseSerial((await ferry(['vm', 'console', 'demo', '--tail', '4000'], false)).out);
  const hb = r.heartbeats.at(-1);
  process.stdout.write(`  ferry-hb ${hb?.seq} ${hb?.guestMs}   ferry-ack ${r.highestAck}\n`);
}
await must(['vm', 'list']);

// Live migration with shared storage: host-a → host-b → host-a while the guest keeps printing.
for (const to of ['host-b', 'host-a']) {
  const before = parseSerial((await ferry(['vm', 'console', 'demo', '--tail', '4000'], false)).out).heartbeats.at(-1);
  await must(['move-vm', 'demo', '--to', to]);
  await sleep(1000);
  const after = parseSerial((await ferry(['vm', 'console', 'demo', '--tail', '4000'], false)).out).heartbeats.at(-1);
  process.stdout.write(
    `  heartbeat before the move: ferry-hb ${before?.seq}; one second after, on ${to}: ferry-hb ${after?.seq}\n`,
  );
}

// Shared nothing: a VM on host-a's local disk moves with its disk to host-b; then a storage
// move puts its files on the shared pool, while it runs.
await must(['vm', 'new', 'demo-local', '--host', 'host-a', '--guest', 'probe', '--start']);
await sleep(3000);
await must(['move-vm', 'demo-local', '--to', 'host-b', '--include-storage']);
await must(['move-storage', 'demo-local', '--path', path.join(lab, 'shared', 'demo-local')]);
await must(['vm', 'list']);
await must(['migration', 'list', '--all']);

// The failover cluster: a 3-host lab with etcd. Drain host-c (its VMs move by priority through
// the cluster queue; the node stays paused), resume it with fail-back, then kill the host that
// runs the HA VM and watch the cluster restart it on another node.
const clab = process.env.FERRY_DEMO_CLUSTER_LAB ?? path.join(REPO_ROOT, '.cache', 'demo-cluster');
const cl = (args: string[]): Promise<string> => must(['--lab', clab, ...args]);
await must(['lab', 'up', '--dir', clab, '--hosts', '3', '--cluster']);
for (const vm of ['ha1', 'c2', 'c3']) {
  if ((await ferry(['--lab', clab, 'vm', 'show', vm], false)).code === 0) {
    await ferry(['--lab', clab, 'vm', 'stop', vm, '--force'], false);
    await must(['--lab', clab, 'vm', 'rm', vm], false);
  }
}
await cl([
  'vm',
  'new',
  'ha1',
  '--host',
  'host-c',
  '--guest',
  'probe',
  '--ha',
  '--priority',
  'high',
  '--path',
  path.join(clab, 'shared', 'ha1'),
  '--start',
]);
for (const vm of ['c2', 'c3'])
  await cl([
    'vm',
    'new',
    vm,
    '--host',
    'host-c',
    '--guest',
    'probe',
    '--probe-no-writer',
    '--memory',
    '128',
    '--ha',
    '--priority',
    'low',
    '--path',
    path.join(clab, 'shared', vm),
    '--start',
  ]);
await sleep(5000);
await cl(['cluster', 'drain', 'host-c', '--dry-run']);
await cl(['cluster', 'drain', 'host-c']);
await cl(['cluster', 'status']);
await cl(['cluster', 'resume', 'host-c', '--failback']);
const ha = JSON.parse(await must(['--lab', clab, 'vm', 'show', 'ha1', '--json'], false)) as {
  host: string;
  id: string;
};
await cl(['lab', 'kill', ha.host, '--dir', clab]);
const killedAt = Date.now();
let where = '';
while (!where && Date.now() - killedAt < 60_000) {
  const r = await ferry(['--lab', clab, 'vm', 'show', 'ha1', '--json'], false);
  if (r.code === 0) {
    const v = JSON.parse(r.out) as { host: string; state: string };
    if (v.host !== ha.host && v.state === 'running') where = v.host;
  }
  if (!where) await sleep(250);
}
process.stdout.write(
  `\nHA: ${ha.host} killed (agent, QEMUs, etcd member); ` +
    `ha1 running on ${where || '(not yet)'} after ${Date.now() - killedAt} ms\n`,
);
await cl(['cluster', 'status']);
await cl(['lab', 'up', '--dir', clab]);
// One lab stays up to explore (the 2-host one); the cluster's 3 agents, etcd members and VMs stop.
await must(['lab', 'down', '--dir', clab]);

process.stdout.write(`
The cluster lab is stopped (its files stay in ${clab}; 'bin/ferry lab up --dir ${clab}' starts it again).
The 2-host lab keeps running (2 agents and the VMs demo and demo-local). Try:
  export FERRY_LAB=${lab}
  bin/ferry vm console demo --follow        # Ctrl-C to stop following
  bin/ferry vm pause demo; bin/ferry vm resume demo
  bin/ferry host show host-b
  bin/ferry compare-vm demo --to host-b
  bin/ferry move-vm demo --to host-b --bandwidth 8      # watch the progress bar, ETA and verdict
  bin/ferry migration list --all
  bin/ferry vm new web1 --host host-b --guest bootblock --start
  bin/ferry lab down                         # stops every agent and VM of the lab
`);
