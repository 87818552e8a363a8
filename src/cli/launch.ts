// The `ferry` command's entry (bin/ferry, /usr/bin/ferry), bundled alone as CommonJS
// (dist/launch.cjs): a command runs from the CommonJS bundle of the CLI (cli.cjs) through V8's
// code cache (code-cache.ts says why), a daemon (agent, fence, console) from the ES module
// bundle (cli.mjs): it starts once, and keeps its code split at each dynamic import. The
// CommonJS bundle leaves the daemons' own code out (half its size: less to read at each start).
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { commandWord, runCached } from './code-cache.js';
import { DAEMON_COMMANDS, commandOf } from './command-of.js';

const here = __dirname;
const args = process.argv.slice(2);
const cjs = path.join(here, 'cli.cjs');
if (DAEMON_COMMANDS.has(commandOf(args)) || !fs.existsSync(cjs))
  void import(pathToFileURL(path.join(here, 'cli.mjs')).href);
else runCached(cjs, commandWord(args));
