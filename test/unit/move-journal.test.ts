// The move journal in the agent's registry (sqlite, synchronous = FULL): entries come back in
// order, per move, after the database is closed and opened again, and can be dropped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Registry } from '../../src/agent/registry.js';
import type { JournalEntry } from '../../src/migration/journal.js';

function entry(seq: number, step: string, event: JournalEntry['event'], data?: Record<string, unknown>): JournalEntry {
  return { seq, at: new Date(0).toISOString(), step, event, ...(data ? { data } : {}) };
}

test('journal entries persist in order per move, survive a reopen, and are dropped per move', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-journal-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'ferry.db');
  const reg = new Registry(file);
  reg.journalAppend('m2', entry(1, 'prepare', 'begin'));
  reg.journalAppend('m1', entry(2, 'prepare', 'done', { port: 4711 }));
  reg.journalAppend('m1', entry(1, 'prepare', 'begin'));
  reg.journalAppend('m1', entry(3, 'copy', 'begin'));
  assert.throws(() => reg.journalAppend('m1', entry(3, 'copy', 'done')), /UNIQUE|constraint/i);
  reg.close();

  const again = new Registry(file);
  t.after(() => again.close());
  assert.deepEqual(again.journalMoves(), ['m1', 'm2']);
  assert.deepEqual(
    again.journalRead('m1').map((e) => [e.seq, e.step, e.event]),
    [
      [1, 'prepare', 'begin'],
      [2, 'prepare', 'done'],
      [3, 'copy', 'begin'],
    ],
  );
  assert.deepEqual(again.journalRead('m1')[1]?.data, { port: 4711 });
  again.journalDrop('m1');
  assert.deepEqual(again.journalRead('m1'), []);
  assert.deepEqual(again.journalMoves(), ['m2']);
  assert.deepEqual(again.journalRead('nothing'), []);
});

test('entries and records written without waiting for the disk read back like the others', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-journal-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'ferry.db');
  const reg = new Registry(file);
  reg.journalAppend('m1', entry(1, 'prepare', 'begin'));
  reg.journalAppend('m1', entry(2, 'prepare', 'done'), { durable: false });
  reg.journalAppend('m1', entry(3, 'copy', 'begin'));
  assert.throws(() => reg.journalAppend('m1', entry(3, 'copy', 'done'), { durable: false }), /UNIQUE|constraint/i);
  assert.equal(reg.journalRead('m1').length, 3);
  reg.close();
  const again = new Registry(file);
  t.after(() => again.close());
  assert.deepEqual(
    again.journalRead('m1').map((e) => [e.seq, e.event]),
    [
      [1, 'begin'],
      [2, 'done'],
      [3, 'begin'],
    ],
  );
});
