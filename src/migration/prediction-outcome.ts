// A prediction set against the move it predicted: what `ferry migration show` and the console's
// migration view print beside the outcome, so an administrator learns how far to trust the next
// one. Pure, and imports only types: the CLI and the web bundle use it without the policy.
import type { MigrationRecord, Prediction } from './schemas.js';

export type LadderStep = Prediction['step'];

export interface PredictionOutcome {
  /** The convergence ladder's step the move reached; null while it runs or when it failed otherwise. */
  step: LadderStep | null;
  /** (predicted − actual) / actual total time, in percent; null until the move completed. */
  totalErrPct: number | null;
  /** Predicted less actual downtime, in ms; null unless both are known. */
  downtimeErrMs: number | null;
}

/** What the move did on the ladder, read from its record (policy.ts writes its reasons to the log). */
export function stepReached(r: MigrationRecord): LadderStep | null {
  if (r.postcopy) return 'post-copy';
  if (r.error?.code === 'E_NOT_CONVERGING') return 'abort';
  if (r.state !== 'completed') return null;
  if (r.throttlePct > 0) return 'auto-converge';
  if (r.events.some((e) => / downtime limit raised to /.test(` ${e.message}`))) return 'raise-downtime';
  return 'pre-copy';
}

export function predictionOutcome(p: Prediction, r: MigrationRecord): PredictionOutcome {
  const completed = r.state === 'completed' && r.totalMs !== null && r.totalMs > 0;
  return {
    step: stepReached(r),
    totalErrPct: completed && r.totalMs ? Math.round(((p.totalMs - r.totalMs) / r.totalMs) * 100) : null,
    downtimeErrMs: p.downtimeMs !== null && r.downtimeMs !== null ? p.downtimeMs - r.downtimeMs : null,
  };
}

/** One line: the outcome against the prediction, or null while there is nothing to compare. */
export function describeOutcome(p: Prediction, r: MigrationRecord): string | null {
  const o = predictionOutcome(p, r);
  if (o.step === null) return null;
  const signed = (x: number): string => `${x > 0 ? '+' : x < 0 ? '−' : '±'}${Math.abs(x)} %`;
  const sec = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
  const parts: string[] = [];
  // The error is the prediction's: + predicted longer than the move took.
  if (o.totalErrPct !== null && r.totalMs !== null)
    parts.push(`took ${sec(r.totalMs)}, predicted ~${sec(p.totalMs)} (${signed(o.totalErrPct)})`);
  if (r.downtimeMs !== null && p.downtimeMs !== null)
    parts.push(`downtime ${r.downtimeMs} ms, predicted ~${p.downtimeMs} ms`);
  parts.push(o.step === p.step ? `${o.step} as predicted` : `reached ${o.step} where ${p.step} was predicted`);
  return parts.join(', ');
}
