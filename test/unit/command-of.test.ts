// cli/command-of.ts: which command a command line runs, before commander (launch.ts sends the
// daemons to the ES module bundle, which alone holds their code).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DAEMON_COMMANDS, commandOf } from '../../src/cli/command-of.js';

test('the command is the first argument that is neither a global option nor its value', () => {
  assert.equal(commandOf(['agent', '--name', 'h1']), 'agent');
  assert.equal(commandOf(['--lab', 'agent', 'vm', 'list']), 'vm', "a lab folder named 'agent' is not the command");
  assert.equal(commandOf(['--context', '/x/c.json', 'fence', '--data', 'd']), 'fence');
  assert.equal(commandOf(['--lab=/tmp/l', 'console', 'serve']), 'console');
  assert.equal(commandOf(['-h']), '');
  assert.equal(commandOf([]), '');
  assert.ok(['agent', 'fence', 'console'].every((c) => DAEMON_COMMANDS.has(c)));
  assert.ok(!DAEMON_COMMANDS.has('vm'));
});
