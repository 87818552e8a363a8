/** A thin usage bar. */
export function Meter({ used, total }: { used: number; total: number }) {
  const pct = total > 0 ? Math.max(0, Math.min(100, (used / total) * 100)) : 0;
  return (
    <div className="meter" aria-hidden="true">
      <div style={{ width: `${pct}%` }} />
    </div>
  );
}
