// Node's DEP0123 warning (a TLS server name that is an IP address, which gRPC under etcd3 sends
// for every etcd endpoint) is dropped by the CLI and agent; other warnings still print.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const util = fileURLToPath(new URL('../../src/util/grpc-ip-warning.ts', import.meta.url));

function run(drop: boolean): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-dep0123-'));
  try {
    const file = path.join(dir, 'main.ts');
    fs.writeFileSync(
      file,
      [
        "import tls from 'node:tls';",
        `import { dropGrpcIpServerNameWarning } from ${JSON.stringify(util)};`,
        drop ? 'dropGrpcIpServerNameWarning();' : '',
        "const s = tls.connect({ host: '127.0.0.1', port: 9, servername: '127.0.0.1' });",
        "s.on('error', () => undefined);",
        "process.emitWarning('another warning', 'Warning', 'X_OTHER');",
      ].join('\n'),
    );
    return spawnSync(process.execPath, ['--import', 'tsx', file], { encoding: 'utf8', timeout: 30_000 }).stderr;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('DEP0123 is dropped and only it: another warning still prints', () => {
  assert.match(run(false), /DEP0123/, 'without the filter Node warns');
  const err = run(true);
  assert.doesNotMatch(err, /DEP0123/);
  assert.match(err, /another warning/);
});
