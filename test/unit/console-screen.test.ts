// The CSRF token a screen websocket carries as a subprotocol (src/console/screen.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { csrfFromProtocols } from '../../src/console/screen.js';

test('the CSRF token is read from the ferry-csrf subprotocol, wherever it is in the list', () => {
  assert.equal(csrfFromProtocols('binary, ferry-csrf.abc_-9'), 'abc_-9');
  assert.equal(csrfFromProtocols('ferry-csrf.tok,binary'), 'tok');
  assert.equal(csrfFromProtocols(['binary', 'ferry-csrf.x1']), 'x1');
});

test('no ferry-csrf subprotocol gives an empty token (the console refuses it)', () => {
  assert.equal(csrfFromProtocols(undefined), '');
  assert.equal(csrfFromProtocols('binary'), '');
  assert.equal(csrfFromProtocols('binary, ferry-csrfx'), '');
  assert.equal(csrfFromProtocols('ferry-csrf.'), '');
});
