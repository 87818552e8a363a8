// /etc/ferry/agent.json: defaults for an installed host, and every malformed or unknown
// field refused with a message naming the field and the fix (the CLI exits 2 on these).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { loadHostConfig } from '../../src/agent/host-config.js';
import { loadAgentConfig } from '../../src/agent/config.js';
import { FerryError } from '../../src/errors.js';
import { tempDir } from '../helpers.js';

async function write(dir: string, content: unknown): Promise<string> {
  const f = path.join(dir, `agent-${Math.random().toString(36).slice(2)}.json`);
  await fsp.writeFile(f, typeof content === 'string' ? content : JSON.stringify(content));
  return f;
}

async function refused(file: string, re: RegExp): Promise<void> {
  await assert.rejects(loadHostConfig(file), (e: FerryError) => {
    assert.equal(e.code, 'E_INVALID_INPUT', 'exit code 2');
    assert.match(e.message, /^Cannot start the agent: /);
    assert.match(e.message, re);
    return true;
  });
}

test('a minimal agent.json gets the installed defaults', async (t) => {
  const dir = await tempDir(t);
  const c = await loadHostConfig(await write(dir, { name: 'hv1' }));
  assert.deepEqual(c, {
    name: 'hv1',
    listen: '0.0.0.0:7443',
    dataDir: '/var/lib/ferry',
    tlsDir: '/etc/ferry/tls',
    migrationPorts: '49152-49215',
    pools: [],
    switches: [],
  });
  const full = await loadHostConfig(
    await write(dir, {
      name: 'hv2',
      listen: '10.0.0.2',
      migrationAddress: '10.1.0.2',
      migrationPorts: '50000-50100',
      pools: [{ name: 'nfs', kind: 'shared', path: '/mnt/ferry' }],
      cluster: { name: 'prod', endpoints: ['https://10.0.0.1:2379'] },
    }),
  );
  assert.equal(full.listen, '10.0.0.2:7443', 'the port defaults to 7443');
  assert.equal(full.pools[0]?.path, '/mnt/ferry');
});

test('unknown and malformed fields are refused, naming the field and the fix', async (t) => {
  const dir = await tempDir(t);
  await refused(
    await write(dir, { name: 'hv1', listn: '0.0.0.0' }),
    new RegExp(
      String.raw`agent-\w+\.json: field 'listn' is not a setting Ferry knows ` +
        String.raw`\(known: name, listen, .*\); fix it and start the agent again$`,
    ),
  );
  await refused(
    await write(dir, { name: 'hv1', cluster: { name: 'c', endpoints: ['https://a:2379'], lease: 3 } }),
    /field 'cluster\.lease' is not a setting Ferry knows/,
  );
  await refused(await write(dir, { name: 'hv 1' }), /field 'name' \("hv 1"\) must be 1–63 letters/);
  await refused(await write(dir, {}), /field 'name' \(missing\)/);
  await refused(
    await write(dir, { name: 'a', listen: '0.0.0.0:99999' }),
    /field 'listen' .* must be ADDRESS or ADDRESS:PORT/,
  );
  await refused(
    await write(dir, { name: 'a', dataDir: 'var/lib' }),
    /field 'dataDir' \("var\/lib"\) must be an absolute path/,
  );
  await refused(
    await write(dir, { name: 'a', migrationPorts: '80-90' }),
    /field 'migrationPorts' \("80-90"\) must be a range FROM-TO of unprivileged ports, such as 49152-49215/,
  );
  await refused(
    await write(dir, { name: 'a', pools: [{ name: 'x', kind: 'nfs', path: 'rel' }] }),
    new RegExp(
      String.raw`field 'pools\.0\.kind' \("nfs"\) expected one of "local"\|"shared"; ` +
        String.raw`field 'pools\.0\.path' \("rel"\) must be an absolute path`,
    ),
  );
  await refused(await write(dir, '{"name": "a",'), /is not valid JSON \(.*\); fix it/);
  await refused(
    path.join(dir, 'missing.json'),
    /does not exist; create it with 'ferry host init NAME --address ADDRESS'/,
  );
});

test("a migration port range overlapping the agent's port is refused", async (t) => {
  const dir = await tempDir(t);
  await refused(
    await write(dir, { name: 'a', migrationPorts: '7400-7500' }),
    new RegExp(
      String.raw`field 'migrationPorts' \("7400-7500"\) includes the agent's own port 7443 \(field 'listen'\); ` +
        String.raw`choose a range without it, such as 49152-49215`,
    ),
  );
  await refused(
    await write(dir, { name: 'a', listen: '0.0.0.0:50000', migrationPorts: '49152-50100' }),
    /includes the agent's own port 50000/,
  );
  // The same rule for the command-line flags (the lab's agents).
  await assert.rejects(
    loadAgentConfig({ name: 'a', data: dir, listen: '127.0.0.1:50010', migrationPorts: '50000-50020' }),
    /Cannot use migration ports 50000-50020: it includes the agent's own port 50010; choose a range without it/,
  );
});

test('settings of agent.json merge with what the agent wrote in DATA/agent.json', async (t) => {
  const dir = await tempDir(t);
  await fsp.writeFile(
    path.join(dir, 'agent.json'),
    JSON.stringify({ cluster: { name: 'lab', endpoints: ['https://127.0.0.1:2379'] } }),
  );
  const cfg = await loadAgentConfig({
    name: 'a',
    data: dir,
    listen: '0.0.0.0:7443',
    migrationPorts: '49152-49215',
    settings: { pools: [{ name: 'nfs', kind: 'shared', path: '/mnt/x' }], switches: [] },
  });
  assert.deepEqual(cfg.migrationPorts, { from: 49152, to: 49215 });
  assert.deepEqual(
    cfg.pools.map((p) => p.name),
    ['local', 'nfs'],
  );
  assert.equal(cfg.cluster?.name, 'lab', "'ferry cluster join' recorded it");
  await assert.rejects(
    loadAgentConfig({
      name: 'a',
      data: dir,
      listen: '0.0.0.0:7443',
      settings: { cluster: { name: 'prod', endpoints: ['https://10.0.0.1:2379'] } },
    }),
    /names cluster 'prod' but .*agent\.json \(written by 'ferry cluster join'\) names 'lab'; remove one of them/,
  );
});
