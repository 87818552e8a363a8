// The CLI exits as soon as a command's output is written, and not before (a slow pipe's reader
// still gets all of it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { exitWhenWritten } from '../../src/cli/exit.js';

/** A stream that takes each chunk only after `ms`, as a pipe whose reader is slow. */
function slowSink(ms: number): { stream: Writable; got: () => number } {
  let got = 0;
  const stream = new Writable({
    highWaterMark: 16,
    write(chunk: Buffer, _enc, cb) {
      setTimeout(() => {
        got += chunk.length;
        cb();
      }, ms);
    },
  });
  return { stream, got: () => got };
}

test('exit waits for queued output to be written, then exits once', async () => {
  const out = slowSink(20);
  const err = slowSink(5);
  out.stream.write('x'.repeat(1000));
  out.stream.write('y'.repeat(500));
  err.stream.write('z');
  let exits = 0;
  let gotAtExit = -1;
  await exitWhenWritten([out.stream, err.stream], () => {
    exits++;
    gotAtExit = out.got() + err.got();
  });
  assert.equal(exits, 1);
  assert.equal(gotAtExit, 1501);
});

test('nothing queued: exit at once', async () => {
  const out = slowSink(1000);
  let exits = 0;
  await exitWhenWritten([out.stream], () => exits++);
  assert.equal(exits, 1);
  assert.equal(out.got(), 0);
});
