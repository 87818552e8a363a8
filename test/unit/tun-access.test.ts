import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tunRefusal } from '../../src/vm/network.js';

test("QEMU's user may attach to a tap only when it can open /dev/net/tun: the reason says mode and owner", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-tun-'));
  try {
    const f = path.join(dir, 'tun');
    fs.writeFileSync(f, '');
    const u = { name: 'ferry-qemu', uid: 4242, gid: 4242, groups: [4242] };
    fs.chmodSync(f, 0o666);
    assert.equal(await tunRefusal(u, f), null);
    fs.chmodSync(f, 0o600);
    assert.match((await tunRefusal(u, f)) ?? '', /cannot open .*tun \(mode 0600, owner 0:0\)/);
    fs.chownSync(f, 4242, 0);
    assert.equal(await tunRefusal(u, f), null, 'its own file');
    fs.chmodSync(f, 0o660);
    fs.chownSync(f, 0, 4242);
    assert.equal(await tunRefusal(u, f), null, 'its group may read and write');
    assert.match((await tunRefusal(u, path.join(dir, 'none'))) ?? '', /does not exist \(load the tun module/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
