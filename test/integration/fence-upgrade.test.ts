// An upgrade must not leave a fence of the old protocol running: it would keep a restarting
// agent's lease without writing the node's beats, and the leader would count the node down
// while its VMs still run. The agent replaces a fence of another protocol when it starts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  FENCE_PROTOCOL,
  ensureFence,
  fenceFiles,
  fenceProtocol,
  processAlive,
  runningFence,
  stopFence,
} from '../../src/cluster/fence.js';
import { sleep } from '../../src/util/exec.js';

test('a fence of an older protocol is stopped and a current one started; a current one is kept', async () => {
  const data = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-fence-up-'));
  // The old fence: a process whose command line is `… fence --data DATA`, its pid file one line.
  const old = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', 'fence', '--data', data], {
    stdio: 'ignore',
  });
  try {
    fs.mkdirSync(path.join(data, 'run'), { recursive: true });
    fs.writeFileSync(fenceFiles(data).pid, `${old.pid}\n`);
    assert.equal(runningFence(data), old.pid);
    assert.equal(fenceProtocol(data), 1);

    const pid = await ensureFence(data);
    assert.ok(pid && pid !== old.pid, 'a new fence was started');
    for (let i = 0; i < 100 && processAlive(old.pid!); i++) await sleep(100);
    assert.equal(processAlive(old.pid!), false, 'the old fence is gone');
    // The new fence writes its pid file with the protocol once it runs.
    for (let i = 0; i < 200 && runningFence(data) !== pid; i++) await sleep(100);
    assert.equal(runningFence(data), pid);
    assert.equal(fenceProtocol(data), FENCE_PROTOCOL);
    assert.equal(await ensureFence(data), pid, 'a current fence is kept');
  } finally {
    old.kill('SIGKILL');
    await stopFence(data, 'SIGKILL');
    fs.rmSync(data, { recursive: true, force: true });
  }
});
