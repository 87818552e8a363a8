import { test } from 'node:test';
import assert from 'node:assert/strict';
import { definedFields } from '../../src/util/fields.js';

test('definedFields keeps set fields (falsy ones too) and drops undefined ones', () => {
  const req: { a?: number; b?: string; c?: boolean; d?: string[] } = { a: 0, b: undefined, c: false, d: [] };
  assert.deepEqual(definedFields(req), { a: 0, c: false, d: [] });
  assert.deepEqual({ a: 1, b: 'x', ...definedFields({ a: undefined, b: 'y' }) }, { a: 1, b: 'y' });
});
