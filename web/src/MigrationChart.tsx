// Remaining memory (left axis, MiB) and transfer / dirty rates (right axis, MiB/s) over
// time, hand-drawn in SVG.
import type { Sample } from './samples.js';

const W = 640;
const H = 200;
const PAD = { l: 56, r: 64, t: 12, b: 28 };
const MiB = 1024 * 1024;

/** A round axis maximum at or above v. */
function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmtAxis(v: number): string {
  return v >= 100 ? String(Math.round(v)) : v >= 10 ? v.toFixed(0) : v.toFixed(1);
}

export function MigrationChart({ samples }: { samples: readonly Sample[] }) {
  const first = samples[0];
  const last = samples[samples.length - 1];
  if (samples.length < 2 || !first || !last) {
    return (
      <div className="chart-empty muted small" data-testid="migration-chart">
        Collecting samples…
      </div>
    );
  }
  const t0 = first.t;
  const span = Math.max(1, (last.t - t0) / 1000);
  const remMax = niceMax(Math.max(...samples.map((s) => (s.remainingBytes ?? 0) / MiB)));
  const rateMax = niceMax(Math.max(...samples.map((s) => Math.max(s.transferBps, s.dirtyBps) / MiB)));
  const iw = W - PAD.l - PAD.r;
  const ih = H - PAD.t - PAD.b;
  const x = (t: number): number => PAD.l + ((t - t0) / 1000 / span) * iw;
  const yL = (v: number): number => PAD.t + ih - (v / remMax) * ih;
  const yR = (v: number): number => PAD.t + ih - (v / rateMax) * ih;
  const line = (pts: Array<[number, number]>): string =>
    pts.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(' ');
  const hasRemaining = samples.some((s) => s.remainingBytes !== null);
  const remaining = line(
    samples.flatMap((s): Array<[number, number]> =>
      s.remainingBytes === null ? [] : [[x(s.t), yL(s.remainingBytes / MiB)]],
    ),
  );
  const transfer = line(samples.map((s) => [x(s.t), yR(s.transferBps / MiB)]));
  const dirty = line(samples.map((s) => [x(s.t), yR(s.dirtyBps / MiB)]));
  const ticks = [0, 0.25, 0.5, 0.75, 1];

  return (
    <figure className="chart" data-testid="migration-chart">
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label="Remaining memory, transfer rate and dirty rate over time">
        {ticks.map((f) => {
          const y = PAD.t + ih - f * ih;
          return (
            <g key={f}>
              <line x1={PAD.l} x2={W - PAD.r} y1={y} y2={y} className="grid" />
              {hasRemaining && (
                <text x={PAD.l - 6} y={y + 4} textAnchor="end" className="axis remaining">
                  {fmtAxis(f * remMax)}
                </text>
              )}
              <text x={W - PAD.r + 6} y={y + 4} textAnchor="start" className="axis rate">
                {fmtAxis(f * rateMax)}
              </text>
            </g>
          );
        })}
        {ticks.map((f) => (
          <text
            key={`x${f}`}
            x={PAD.l + f * iw}
            y={H - 8}
            textAnchor="middle"
            className="axis"
          >{`${span < 10 ? (f * span).toFixed(1) : Math.round(f * span)} s`}</text>
        ))}
        {hasRemaining && (
          <text
            x={8}
            y={PAD.t + 4}
            className="axis remaining"
            transform={`rotate(-90 8 ${PAD.t + 4})`}
            textAnchor="end"
          >
            MiB
          </text>
        )}
        <text x={W - 6} y={PAD.t + 4} className="axis rate" transform={`rotate(90 ${W - 6} ${PAD.t + 4})`}>
          MiB/s
        </text>
        {hasRemaining && <polyline points={remaining} className="series remaining" />}
        <polyline points={transfer} className="series transfer" />
        <polyline points={dirty} className="series dirty" />
      </svg>
      <figcaption className="legend">
        {hasRemaining && (
          <span>
            <i className="swatch remaining" />
            remaining memory (MiB)
          </span>
        )}
        <span>
          <i className="swatch transfer" />
          transfer rate (MiB/s)
        </span>
        <span>
          <i className="swatch dirty" />
          dirty rate (MiB/s)
        </span>
      </figcaption>
    </figure>
  );
}
