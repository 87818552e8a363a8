// `ferry audit`: who asked each host for which change, and what came of it (the agents'
// audit trails, GET /v1/audit; only an admin certificate may read them).
import { InvalidArgumentError, type Command } from '@commander-js/extra-typings';
import type { AuditEntry } from '../../api/schemas.js';
import { FerryError, messageOf } from '../../errors.js';
import type { GlobalOpts } from '../context.js';
import { withHosts } from '../hosts.js';
import { printJson, printTable } from '../output.js';
import { positiveInt } from '../parse.js';

type Cmd = { optsWithGlobals(): GlobalOpts };

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `--since`: a duration back from NOW (90s, 30m, 12h, 7d) or a date-time (ISO 8601) → ISO time. */
export function parseSince(s: string, now = Date.now()): string {
  const m = /^(\d{1,9})([smhd])$/.exec(s.trim());
  if (m?.[1] && m[2]) return new Date(now - Number(m[1]) * (UNIT_MS[m[2]] ?? 0)).toISOString();
  const t = /^\d{4}-\d\d-\d\d/.test(s) ? Date.parse(s) : NaN;
  if (Number.isNaN(t))
    throw new InvalidArgumentError(
      `Cannot use --since '${s}': write a duration like 30m, 12h or 7d, or a date-time like 2026-12-01T08:00:00Z`,
    );
  return new Date(t).toISOString();
}

function targetText(e: AuditEntry): string {
  return e.target ?? (e.action ? '-' : `${e.method} ${e.path}`);
}

export function registerAudit(program: Command): void {
  program
    .command('audit')
    .description('who asked for which change on each host, and the outcome (admin certificates only)')
    .option('--host <host>', 'one host (default: every host of the context)')
    .option('--since <when>', 'only entries since a duration ago (30m, 12h, 7d) or a date-time', (s) => parseSince(s))
    .option('--who <name>', 'only requests by this user, console user, host or certificate name')
    .option('--limit <n>', 'the newest N entries per host (default 1000)', positiveInt('--limit', 10_000))
    .option('--json', 'JSON: one array of entries, oldest first')
    .action(async (o, cmd) => {
      const query = {
        ...(o.since ? { since: o.since } : {}),
        ...(o.who ? { who: o.who } : {}),
        ...(o.limit ? { limit: o.limit } : {}),
      };
      await withHosts((cmd as Cmd).optsWithGlobals(), async (c, actions) => {
        const hosts = o.host ? [c.host(o.host)] : c.all();
        const res = await Promise.all(
          hosts.map(async (h) => {
            try {
              return { host: h.host, view: await h.call(actions.auditList, { query }, { timeoutMs: 60_000 }) };
            } catch (err) {
              // One host's refusal (a non-admin certificate) is the answer when it is the only one asked.
              if (hosts.length === 1) throw err;
              return { host: h.host, error: err };
            }
          }),
        );
        const failed = res.flatMap((r) => ('error' in r ? [r] : []));
        for (const f of failed)
          process.stderr.write(`ferry: cannot read the audit of ${f.host}: ${messageOf(f.error)}\n`);
        if (failed.length === res.length && failed[0])
          throw failed[0].error instanceof FerryError
            ? failed[0].error
            : new FerryError('E_HTTP', `Cannot read any host's audit: ${messageOf(failed[0].error)}`);
        const entries = res
          .flatMap((r) => ('view' in r && r.view ? r.view.entries : []))
          .sort((a, b) => a.time.localeCompare(b.time));
        const skipped = res.reduce((n, r) => n + ('view' in r && r.view ? r.view.skipped : 0), 0);
        if (skipped) process.stderr.write(`ferry: ${skipped} audit lines were not entries and are left out\n`);
        if (o.json) {
          printJson(entries);
          return;
        }
        printTable(
          ['TIME', 'HOST', 'WHO', 'ROLE', 'VIA', 'ACTION', 'TARGET', 'OUTCOME'],
          entries.map((e) => [
            e.time,
            e.host,
            e.who,
            e.role,
            e.via === 'console' ? `console (${e.certificate})` : e.certificate,
            e.action ?? '-',
            targetText(e),
            e.outcome === 'ok' ? 'ok' : `${e.outcome} ${e.code ?? e.status}`,
          ]),
        );
      });
    });
}
