import type { HostView } from '../../src/api/schemas.js';
import type { HostRef } from './client.js';
import { bytes } from './format.js';
import { ErrorMessage } from './ErrorMessage.js';
import { Meter } from './Meter.js';

export function HostCard({ host, view, error }: { host: HostRef; view?: HostView; error?: Error }) {
  return (
    <article className="card host-card" data-testid={`host-card-${host.name}`}>
      <header className="card-head">
        <h3>{host.name}</h3>
        <span className={`badge ${view ? 'ok' : 'bad'}`} data-testid={`host-state-${host.name}`}>
          {view ? 'up' : 'unreachable'}
        </span>
      </header>
      <div className="muted small">{host.endpoint}</div>
      {error && <ErrorMessage error={error} />}
      {view && (
        <>
          <dl className="facts">
            <dt>CPU</dt>
            <dd data-testid={`host-cpu-${host.name}`}>
              {view.cpu.model} ({view.cpu.vendor}), {view.cpu.count} CPUs
            </dd>
            <dt>Accelerator</dt>
            <dd data-testid={`host-accel-${host.name}`} title={view.accelerator.reason}>
              {view.accelerator.name.toUpperCase()} <span className="muted small">{view.accelerator.reason}</span>
            </dd>
            <dt>Memory</dt>
            <dd data-testid={`host-memory-${host.name}`}>
              {bytes(view.memory.freeBytes)} free of {bytes(view.memory.totalBytes)}{' '}
              <span className="muted small">(VMs: {bytes(view.memory.vmBytes)})</span>
              <Meter used={view.memory.totalBytes - view.memory.freeBytes} total={view.memory.totalBytes} />
            </dd>
            <dt>VMs</dt>
            <dd>{view.vms}</dd>
            <dt>QEMU</dt>
            <dd>{view.qemu.version}</dd>
            <dt>Live migration</dt>
            <dd data-testid={`host-migration-${host.name}`}>
              {view.migration.enabled ? 'enabled' : 'disabled'} · at most {view.migration.maxLive} live and{' '}
              {view.migration.maxStorage} storage moves at once · TLS {view.migration.tls ? 'on' : 'off'}
              <div className="muted small">
                address {view.migration.address || '–'}
                {view.migration.networks.length ? ` · networks ${view.migration.networks.join(', ')}` : ''}
              </div>
            </dd>
          </dl>
          <h4>Storage pools</h4>
          <table className="table compact" data-testid={`host-pools-${host.name}`}>
            <thead>
              <tr>
                <th>Pool</th>
                <th>Kind</th>
                <th>Path</th>
                <th>Free</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {view.pools.map((p) => (
                <tr key={p.name} data-testid={`host-pool-${host.name}-${p.name}`}>
                  <td>{p.name}</td>
                  <td>{p.kind}</td>
                  <td className="path">{p.path}</td>
                  <td>
                    {bytes(p.freeBytes)} of {bytes(p.totalBytes)}
                    <Meter used={p.totalBytes - p.freeBytes} total={p.totalBytes} />
                  </td>
                  <td>{p.usable ? '' : <span className="badge bad">not usable</span>}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <h4>Switches</h4>
          <p data-testid={`host-switches-${host.name}`}>
            {view.switches.length ? (
              view.switches.map((s) => `${s.name} (${s.kind}${s.bridge ? ` ${s.bridge}` : ''})`).join(', ')
            ) : (
              <span className="muted">none</span>
            )}
          </p>
        </>
      )}
    </article>
  );
}
