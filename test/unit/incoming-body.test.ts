import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeIncoming, encodeIncoming, INCOMING_CONTENT_TYPE } from '../../src/api/incoming-body.js';
import { sendPrepare, withBase64 } from '../../src/migration/prepare-request.js';
import { FerryError } from '../../src/errors.js';

const request = (sizes: number[]): Record<string, unknown> => ({
  jobId: 'job-1',
  source: 'host-a',
  note: 'a line\nbreak inside a string stays inside the JSON',
  storage: { disks: [], dirs: [], files: sizes.map((size, i) => ({ path: `/p/f${i}`, size })) },
});

test("Prepare's body: the JSON, a newline, then each file's bytes; split back exactly", () => {
  const files = [Buffer.from('kernel\n\nbytes'), Buffer.alloc(0), Buffer.from([0, 10, 255, 10])];
  const req = request(files.map((f) => f.length));
  const body = encodeIncoming(req, files);
  const out = decodeIncoming(body, JSON.parse);
  assert.deepEqual(out.request, req);
  assert.deepEqual(
    out.files.map((f) => [...f]),
    files.map((f) => [...f]),
  );
  // A request without storage carries no bytes.
  assert.deepEqual(decodeIncoming(encodeIncoming({ jobId: 'x' }, []), JSON.parse).files, []);
});

test("Prepare's body: bytes that do not match the sizes, or no JSON, are refused with the fix", () => {
  const files = [Buffer.from('abc')];
  const short = encodeIncoming(request([4]), files);
  const long = encodeIncoming(request([2]), files);
  for (const body of [short, long]) {
    assert.throws(
      () => decodeIncoming(body, JSON.parse),
      (e: unknown) =>
        e instanceof FerryError &&
        e.code === 'E_INVALID_INPUT' &&
        /sizes add up to \d+ bytes but 3 follow/.test(e.message),
    );
  }
  assert.throws(() => decodeIncoming(Buffer.from('{"a":1}'), JSON.parse), /no newline after its JSON/);
  assert.throws(() => decodeIncoming(Buffer.from('{nope\nxx'), JSON.parse), /first line is not JSON/);
  const neg = Buffer.from(JSON.stringify({ storage: { files: [{ path: 'a', size: -1 }] } }) + '\n');
  assert.throws(() => decodeIncoming(neg, JSON.parse), /not a whole number of bytes/);
});

test('sendPrepare sends the bytes after the JSON, and JSON with base64 to a destination that answers 415', async () => {
  const files = [Buffer.from('kernel'), Buffer.from('initrd')];
  const body = {
    jobId: 'job-1',
    source: 'host-a',
    spec: {},
    tls: true,
    postcopy: false,
    storage: { disks: [], dirs: [], files: files.map((f, i) => ({ path: `/p/f${i}`, size: f.length })) },
  } as unknown as Parameters<typeof sendPrepare>[1];
  const sent: Array<{ how: string; body: unknown; type?: string | undefined }> = [];
  const view = { jobId: 'job-1' };
  const client = (old: boolean) => ({
    request: (_m: string, url: string, b: unknown, o: { contentType?: string }) => {
      sent.push({ how: `request ${url}`, body: b, type: o.contentType });
      if (old) {
        const e = new FerryError('E_INVALID_INPUT', 'unsupported media type');
        Object.assign(e.context, { status: 415 });
        return Promise.reject(e);
      }
      return Promise.resolve(view);
    },
    call: (_a: unknown, input: { body?: unknown }) => {
      sent.push({ how: 'call', body: input.body });
      return Promise.resolve(view);
    },
  });
  const opts = { signal: new AbortController().signal, timeoutMs: 1000 };
  const c1 = client(false) as unknown as Parameters<typeof sendPrepare>[0];
  assert.deepEqual(await sendPrepare(c1, body, files, opts), view);
  assert.equal(sent.length, 1);
  assert.equal(sent[0]?.type, INCOMING_CONTENT_TYPE);
  assert.deepEqual(
    decodeIncoming(sent.at(0)?.body as Buffer, JSON.parse).files.map((f) => f.toString()),
    ['kernel', 'initrd'],
  );
  sent.length = 0;
  const c2 = client(true) as unknown as Parameters<typeof sendPrepare>[0];
  assert.deepEqual(await sendPrepare(c2, body, files, opts), view);
  assert.deepEqual(
    sent.map((s) => s.how),
    ['request /v1/peer/incoming', 'call'],
  );
  assert.deepEqual(sent[1]?.body, withBase64(body, files));
  const fallback = (sent.at(1)?.body as { storage: { files: Array<{ base64: string }> } }).storage.files;
  assert.deepEqual(
    fallback.map((f) => Buffer.from(f.base64, 'base64').toString()),
    ['kernel', 'initrd'],
  );
});
