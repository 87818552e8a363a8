// The CLI calls the agent through src/api/routes.ts (no zod): it must be the actions' own routes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { actions } from '../../src/api/actions.js';
import { routes } from '../../src/api/routes.js';

test('every action has its route, with the same method, path and body type', () => {
  assert.deepEqual(Object.keys(routes).sort(), Object.keys(actions).sort());
  for (const [k, a] of Object.entries(actions)) {
    const r: { method: string; path: string; contentType?: string } = routes[k as keyof typeof routes];
    assert.deepEqual(
      { method: r.method, path: r.path, contentType: r.contentType },
      { method: a.method, path: a.path, contentType: a.contentType },
      k,
    );
  }
});
