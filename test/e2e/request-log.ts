// Counts what a CLI process asks its agents, seen from inside that process: a module loaded
// with `--import` before the CLI (through NODE_OPTIONS, so bin/ferry and the bundle need no
// change) wraps https.request and, at exit, writes every request and the process's CPU time.
// Plain JavaScript in a data: URL, so it loads as fast as the bundle does (no tsx).
import fsp from 'node:fs/promises';

export interface RequestLog {
  /** "METHOD /path?query" of every request, in order. */
  requests: string[];
  /** The CLI process's own CPU time (process.cpuUsage at exit), in ms. */
  cpuUserMs: number;
  cpuSystemMs: number;
}

const PRELOAD = `
import https from 'node:https';
import fs from 'node:fs';
const requests = [];
const request = https.request;
https.request = function (url, opts, ...rest) {
  const u = new URL(String(url));
  requests.push(((opts && opts.method) || 'GET') + ' ' + u.pathname + u.search);
  return request.call(this, url, opts, ...rest);
};
process.on('exit', () => {
  const c = process.cpuUsage();
  fs.writeFileSync(process.env.FERRY_REQUEST_LOG,
    JSON.stringify({ requests, cpuUserMs: c.user / 1000, cpuSystemMs: c.system / 1000 }));
});`;

/** The environment that makes a CLI process write its request log to `file`. */
export function requestLogEnv(file: string): NodeJS.ProcessEnv {
  const opt = `--import=data:text/javascript,${encodeURIComponent(PRELOAD)}`;
  return {
    FERRY_REQUEST_LOG: file,
    NODE_OPTIONS: [process.env.NODE_OPTIONS, opt].filter(Boolean).join(' '),
  };
}

export async function readRequestLog(file: string): Promise<RequestLog> {
  return JSON.parse(await fsp.readFile(file, 'utf8')) as RequestLog;
}
